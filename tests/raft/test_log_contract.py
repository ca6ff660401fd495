"""The RaftLog contract, as a hypothesis state machine against a plain-list model.

Another RaftLog implementation (the segmented partition log, once it implements the
interface) runs the same rules by subclassing LogMachine with its own `make_log`.
"""

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamlog.raft.log import Entry, MemoryRaftLog


class LogMachine(RuleBasedStateMachine):
    make_log = staticmethod(MemoryRaftLog)

    def __init__(self):
        super().__init__()
        self.log = self.make_log()
        self.model: list[Entry] = []  # entries present
        self.start = 1
        self.prefix_term = 0
        self.prefix_config = None
        self.term = 1

    @property
    def last(self) -> int:
        return self.start + len(self.model) - 1

    @rule(count=st.integers(1, 4), bump=st.booleans(), data=st.binary(max_size=6), config=st.booleans())
    def append(self, count, bump, data, config):
        if bump:
            self.term += 1
        entries = [
            Entry(self.last + 1 + i, self.term, b"" if config else data, ("a", "b") if config and i == 0 else None)
            for i in range(count)
        ]
        self.log.append(entries)
        self.model.extend(entries)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate_suffix(self, data):
        at = data.draw(st.integers(self.start, self.last))
        self.log.truncate_suffix(at)
        del self.model[at - self.start:]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate_prefix(self, data):
        upto = data.draw(st.integers(self.start, self.last))
        for e in self.model[: upto - self.start + 1]:
            if e.config is not None:
                self.prefix_config = e.config
        self.prefix_term = self.model[upto - self.start].term
        del self.model[: upto - self.start + 1]
        self.start = upto + 1
        self.log.truncate_prefix(upto)

    @rule(gap=st.integers(0, 5))
    def reset(self, gap):
        self.term += 1
        index = self.last + gap
        self.log.reset(index, self.term, ("x",))
        self.model, self.start, self.prefix_term, self.prefix_config = [], index + 1, self.term, ("x",)

    @rule(data=st.data())
    def read(self, data):
        lo = data.draw(st.integers(self.start, self.last + 1))
        hi = data.draw(st.integers(lo, self.last + 2))
        max_bytes = data.draw(st.integers(0, 20))
        got = self.log.entries(lo, hi, max_bytes)
        want = self.model[lo - self.start: hi - self.start]
        assert got == want[: len(got)]
        if want:
            assert got, "at least one entry when any is in range"
        if len(got) < len(want):
            assert sum(len(e.data) for e in want[: len(got) + 1]) > max_bytes

    @invariant()
    def positions_agree(self):
        log = self.log
        assert (log.start_index, log.last_index, log.prefix_term) == (self.start, self.last, self.prefix_term)
        assert log.last_term == (self.model[-1].term if self.model else self.prefix_term)
        assert log.term_at(self.start - 1) == self.prefix_term
        assert log.term_at(self.last + 1) is None
        for e in self.model:
            assert log.term_at(e.index) == e.term
        configs = [e for e in self.model if e.config is not None]
        if configs:
            assert log.config_at(self.last) == (configs[-1].index, configs[-1].config)
        elif self.prefix_config is not None:
            assert log.config_at(self.last) == (self.start - 1, self.prefix_config)
        else:
            assert log.config_at(self.last) is None


LogMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestMemoryRaftLog = LogMachine.TestCase
