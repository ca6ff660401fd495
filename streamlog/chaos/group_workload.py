"""The group workload of C{streamlog chaos --group-consumers N}: real member daemons, their faults,
and what goes into the history for the group checker (L{streamlog.chaos.group_checker}).

Each member is a C{twistd streamlog-consumer --group} process (the real daemon, hence the real
L{GroupConsumer}) in one group over the chaos topic, writing its messages to a file and its
events (C{--events}: assigned, revoked, lost, processed, committed) to another.  A member fault
SIGKILLs one (restarted after the hold as a new incarnation: C{m2.1} then C{m2.2}) or SIGSTOPs
it for the hold (around its session timeout, so sometimes its partitions move and it must
notice when it resumes).  Meanwhile the runner reads the group's committed offsets at its
coordinator every L{FETCH_INTERVAL} seconds (C{fetched} events).

At the end, once every partition is drained, the members are given until
L{CATCH_UP_TIMEOUT} to commit the drained end of every partition, then stopped with SIGTERM
(they commit and leave); their event files are copied into the history, on its clock (the
files hold C{CLOCK_MONOTONIC} times, the history's clock is C{CLOCK_MONOTONIC} minus the
run's start).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streamlog import errors
from streamlog.chaos.group_checker import MEMBER_KILL
from streamlog.chaos.history import GroupEvent
from streamlog.cli_cluster_up import _die_with_parent, _node_env, default_server_command

if TYPE_CHECKING:
    from streamlog.chaos.runner import ChaosRun

#: The group the members share.
GROUP = "chaos-group"
#: The members' session timeout (ms), commit interval and tick (s).
SESSION_TIMEOUT_MS = 3000
COMMIT_INTERVAL = 0.5
#: Seconds between the runner's reads of the group's committed offsets.
FETCH_INTERVAL = 0.5
#: Seconds the members get, after the drain, to commit every partition's end.
CATCH_UP_TIMEOUT = 60.0
#: Seconds a member gets to exit after SIGTERM (its last commit and leave) before SIGKILL.
MEMBER_STOP_TIMEOUT = 15.0


def member_command(bootstrap: str, topic: str, events: Path, output: Path, log: Path) -> list[str]:
    """The command line of one member daemon."""
    twistd = default_server_command()[:-1]  # twistd -n --pidfile=, as for the nodes
    return [*twistd, "--logfile", str(log), "streamlog-consumer", "--connect", bootstrap, "--topic", topic, "--group", GROUP,
            "--session-timeout-ms", str(SESSION_TIMEOUT_MS), "--commit-interval", str(COMMIT_INTERVAL),
            "--interval", "0.2", "--max-wait-ms", "300", "--timeout", "5", "--events", str(events),
            "--output", str(output)]


class Member:
    """One member daemon, restartable; each start is a new incarnation with its own files."""

    def __init__(self, number: int, directory: Path, bootstrap: str, topic: str) -> None:
        self.number = number
        self.directory = directory
        self.bootstrap = bootstrap
        self.topic = topic
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False
        #: Every incarnation's name and events file, in start order.
        self.incarnations: list[tuple[str, Path]] = []

    @property
    def name(self) -> str:
        """The current incarnation's name (C{m2.1}); its process name in the history."""
        return f"m{self.number}.{self.starts}"

    def start(self) -> None:
        self.starts += 1
        stem = self.directory / f"member-{self.name}"
        events = Path(f"{stem}.events.jsonl")
        self.incarnations.append((self.name, events))
        command = member_command(self.bootstrap, self.topic, events, Path(f"{stem}.out.jsonl"), Path(f"{stem}.log"))
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=_node_env(), preexec_fn=_die_with_parent(),
                                        process_group=0)
        self.stopped = False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False


def read_events(path: Path, process: str, topic: str, t0: float) -> list[GroupEvent]:
    """A member's events file as history records (times moved to the history's clock).  A
    half-written last line (the process was killed while writing it) is dropped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[GroupEvent] = []
    for line in raw.splitlines():
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        kind, at, generation = e["event"], e["monotonic"] - t0, e.get("generation")
        if kind in ("assigned", "revoked", "lost"):
            parts = tuple(p for t, p in e["partitions"] if t == topic)
            offsets = tuple((p, o) for t, p, o in e.get("offsets", ()) if t == topic)
            until = e["session_end"] - t0 if kind == "lost" else None
            out.append(GroupEvent(kind, process, at, topic, generation, parts, offsets, until=until))
        elif kind == "processed":
            out.append(GroupEvent(kind, process, at, topic, generation, (e["partition"],),
                                  ((e["partition"], e["first"]),), end=e["end"]))
        elif kind == "committed":
            offsets = tuple((p, o) for t, p, o in e["offsets"] if t == topic)
            out.append(GroupEvent(kind, process, at, topic, generation, offsets=offsets, invoke=e["sent"] - t0))
    return out


class GroupWorkload:
    """The members of one run, their faults and the runner's reads of the committed offsets."""

    def __init__(self, run: ChaosRun, count: int) -> None:
        self.run = run
        self.members = [Member(i, run.config.data_dir.parent, run.bootstrap, run.config.topic)
                        for i in range(1, count + 1)]
        self.fetching = False
        self.last_committed: dict[int, int] = {}
        self.notes: list[str] = []

    def start(self) -> None:
        for m in self.members:
            m.start()

    def all_assigned(self) -> bool:
        """Every member got a partition (its events file says so; with more members than
        partitions, as many as there are partitions): the group formed, so the first faults
        hurt members that hold something."""
        from streamlog.chaos.runner import RunAborted

        given = 0
        for m in self.members:
            if not m.alive():
                code = m.process.poll() if m.process is not None else None
                raise RunAborted(f"group consumer {m.name} exited ({code}) before it joined; see "
                                 f"{self.run.config.data_dir.parent}/member-{m.name}.log")
            try:
                given += b'"assigned"' in m.incarnations[-1][1].read_bytes()
            except FileNotFoundError:
                pass
        return given >= min(len(self.members), self.run.config.partitions)

    # --- the runner's reads of the committed offsets ---------------------------------------

    async def coordinator(self) -> int | None:
        """The node coordinating the group now (its offsets partition's leader), if known."""
        for node in sorted(self.run.nodes):
            if not self.run.nodes[node].alive() or self.run.nodes[node].stopped:
                continue
            try:
                answer = await self.run.probe_clients[node].call("FindCoordinator", {"group": GROUP}, timeout=2.0)
            except (errors.StreamlogError, OSError):
                continue
            if answer.get("coordinator") is not None:
                return int(answer["coordinator"])
        return None

    def fetch_tick(self) -> None:
        """One read of the committed offsets (none while the last one is out); errors are skipped."""
        if self.fetching or self.run.recorder.closed:
            return
        self.fetching = True
        from twisted.internet.defer import ensureDeferred

        ensureDeferred(self._fetch()).addBoth(self._fetched)

    def _fetched(self, _: Any) -> None:
        self.fetching = False

    async def _fetch(self) -> None:
        node = await self.coordinator()
        if node is None or self.run.recorder.closed:
            return
        invoke = self.run.recorder.now()
        try:
            answer = await self.run.probe_clients[node].call("FetchOffsets", {"group": GROUP}, timeout=2.0)
        except (errors.StreamlogError, OSError):
            return
        if self.run.recorder.closed:
            return
        topic = self.run.config.topic
        offsets = tuple(sorted((o["partition"], o["offset"]) for o in answer["offsets"] if o["topic"] == topic))
        self.last_committed = dict(offsets)
        self.run.recorder.group_event(GroupEvent("fetched", "offsets", self.run.recorder.now(), topic,
                                                 offsets=offsets, invoke=invoke))

    # --- faults ---------------------------------------------------------------------------

    async def kill(self, number: int, hold: float) -> None:
        from streamlog.chaos.runner import sleep

        m = self.members[number - 1]
        fault = self.run.recorder.fault_started(MEMBER_KILL, m.name, "SIGKILL, restarted as a new member")
        m.signal(signal.SIGKILL)
        await self._exited(m, 10)
        await sleep(self.run.reactor, hold)
        m.start()
        self.run.recorder.fault_healed(fault)

    async def stop(self, number: int, hold: float) -> None:
        from streamlog.chaos.runner import sleep

        m = self.members[number - 1]
        fault = self.run.recorder.fault_started("member-stop", m.name, f"SIGSTOP for {hold:.1f}s, SIGCONT")
        m.signal(signal.SIGSTOP)
        await sleep(self.run.reactor, hold)
        m.signal(signal.SIGCONT)
        self.run.recorder.fault_healed(fault)

    async def _exited(self, m: Member, timeout: float) -> bool:
        from streamlog.chaos.runner import wait_exit

        return await wait_exit(self.run.reactor, m, timeout)

    def heal(self) -> None:
        for m in self.members:
            if m.stopped:
                m.signal(signal.SIGCONT)

    # --- the end ----------------------------------------------------------------------------

    async def finish(self, drained: dict[int, int]) -> None:
        """Wait until the group committed every drained end (or the timeout: noted), stop the
        members, copy their events into the history."""
        from streamlog.chaos.runner import sleep

        self.heal()
        for m in self.members:
            if not m.alive():
                code = m.process.poll() if m.process is not None else None
                self.notes.append(f"member {m.name} exited on its own ({code}); restarted")
                m.start()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while True:
            await self._fetch()
            if all(self.last_committed.get(p, 0) >= end for p, end in drained.items()):
                break
            if time.monotonic() > deadline:
                behind = ", ".join(f"p{p} {self.last_committed.get(p, 0)}/{end}" for p, end in sorted(drained.items())
                                   if self.last_committed.get(p, 0) < end)
                self.notes.append(f"the group did not commit every partition's end within {CATCH_UP_TIMEOUT:g}s "
                                  f"(committed/end: {behind})")
                break
            await sleep(self.run.reactor, FETCH_INTERVAL)
        for m in self.members:
            m.signal(signal.SIGTERM)
        for m in self.members:
            if not await self._exited(m, MEMBER_STOP_TIMEOUT):
                fault = self.run.recorder.fault_started(MEMBER_KILL, m.name, "did not exit after SIGTERM: SIGKILL")
                m.signal(signal.SIGKILL)
                await self._exited(m, 10)
                self.run.recorder.fault_healed(fault)
                self.notes.append(f"member {m.name} did not exit within {MEMBER_STOP_TIMEOUT:g}s of SIGTERM: killed")
        for m in self.members:
            for name, path in m.incarnations:
                for event in read_events(path, name, self.run.config.topic, self.run.t0):
                    self.run.recorder.group_event(event)

    def kill_all(self) -> None:
        """The run is over (or interrupted): no member outlives it."""
        for m in self.members:
            if m.alive():
                m.signal(signal.SIGCONT)
                m.signal(signal.SIGKILL)
