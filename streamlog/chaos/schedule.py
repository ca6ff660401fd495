"""The fault schedule of a chaos run, drawn from its seed (pure: no clock, no processes).

A run injects one fault at a time, so that a 3-node cluster always keeps a majority once
the fault heals: the runner asks L{FaultSchedule.next} for a step, waits C{gap} seconds,
injects the step's fault on its target for C{hold} seconds, heals it, waits until every
node answers again, and asks for the next step until the run's duration is over.  The
same seed, kinds and cluster shape give the same steps (what is drawn does not depend on
how long healing took), so a run that found something is replayed by its seed.

Targets are drawn as either "the leader of partition P" (resolved by the runner from the
cluster's metadata when the fault starts: the interesting node to hurt) or "node N".  With
group consumers (C{members}), the member faults target "member M", and a node fault may
target "the group's coordinator" (the leader of its offsets partition, resolved likewise).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

#: Every fault kind the runner knows (docs/reliability.md, "Faults").
KINDS: Final = ("kill", "stop", "partition", "restart", "wipe", "member-kill", "member-stop")
#: The kinds that hurt a group consumer (a member process), not a node.
MEMBER_KINDS: Final = ("member-kill", "member-stop")
#: What C{--faults} means when not given (with group consumers: and MEMBER_KINDS).
DEFAULT_KINDS: Final = ("kill", "stop", "partition", "restart")
#: The node faults that may target the group's coordinator.
COORDINATOR_KINDS: Final = ("kill", "stop", "partition")


class ScheduleError(ValueError):
    """Options that cannot make a schedule (an unknown fault kind, ...); the message says why."""


def parse_kinds(text: str) -> tuple[str, ...]:
    """C{"kill,stop"} -> C{("kill", "stop")}, in the order given, without repeats."""
    kinds: list[str] = []
    for item in text.split(","):
        kind = item.strip()
        if not kind:
            continue
        if kind not in KINDS:
            raise ScheduleError(f"unknown fault {kind!r}: choose among {', '.join(KINDS)}")
        if kind not in kinds:
            kinds.append(kind)
    if not kinds:
        raise ScheduleError(f"--faults names no fault: choose among {', '.join(KINDS)}")
    return tuple(kinds)


@dataclass(frozen=True, slots=True)
class FaultStep:
    """One fault to inject: C{kind} on C{node} (1-based) or on the leader of C{partition}
    (whichever is not None), after C{gap} seconds of calm, for C{hold} seconds (how long
    a killed node stays down, a stopped one stopped, a cut one cut; a rolling restart and a
    wipe take as long as their nodes take to come back)."""

    number: int
    kind: str
    gap: float
    hold: float
    node: int | None = None
    partition: int | None = None
    #: A member fault's member (1-based); a node fault on the group's coordinator.
    member: int | None = None
    coordinator: bool = False

    def describe(self) -> str:
        if self.member is not None:
            target = f"member {self.member}"
        elif self.coordinator:
            target = "the group's coordinator"
        else:
            target = f"node {self.node}" if self.node is not None else f"the leader of partition {self.partition}"
        return f"#{self.number} {self.kind} on {target} for {self.hold:.1f}s after {self.gap:.1f}s"


@dataclass(frozen=True, slots=True)
class Timing:
    """The ranges the schedule draws from (seconds).  C{stop_min} must exceed the nodes'
    election timeout (randomized in [T, 2T)), so that a stopped leader is replaced."""

    gap: tuple[float, float] = (1.0, 3.0)
    kill: tuple[float, float] = (0.5, 3.0)
    stop: tuple[float, float] = (2.5, 5.0)
    partition: tuple[float, float] = (2.0, 5.0)
    #: Each node's pause between its SIGTERM exit and its restart, in a rolling restart.
    restart: tuple[float, float] = (0.2, 1.0)
    wipe: tuple[float, float] = (0.5, 2.0)
    #: A killed member's time down; a stopped member's time stopped (around its session
    #: timeout, 3 s in a chaos run: sometimes its partitions move, sometimes not).
    member_kill: tuple[float, float] = (0.5, 3.0)
    member_stop: tuple[float, float] = (1.0, 6.0)
    #: The chance that a target is a partition's leader rather than any node.
    leader_bias: float = 0.7
    #: With group consumers, the chance that a node fault targets the group's coordinator.
    coordinator_bias: float = 0.4

    def hold_range(self, kind: str) -> tuple[float, float]:
        ranges = {"kill": self.kill, "stop": self.stop, "partition": self.partition, "restart": self.restart,
                  "wipe": self.wipe, "member-kill": self.member_kill, "member-stop": self.member_stop}
        return ranges[kind]


class FaultSchedule:
    """The steps of one run, drawn one by one from C{seed}.

    Kinds are taken in turns from a shuffled cycle of C{kinds} (every kind comes once per
    cycle), so that a short run still injects each kind, in an order the seed decides.
    """

    def __init__(self, seed: int, kinds: Iterable[str], nodes: int, partitions: int,
                 timing: Timing | None = None, members: int = 0) -> None:
        self.kinds = tuple(kinds)
        for kind in self.kinds:
            if kind not in KINDS:
                raise ScheduleError(f"unknown fault {kind!r}")
            if kind in MEMBER_KINDS and members < 1:
                raise ScheduleError(f"the {kind} fault needs group consumers (--group-consumers)")
        self.members = members
        if not self.kinds:
            raise ScheduleError("no fault kinds")
        if nodes < 1 or partitions < 1:
            raise ScheduleError("a schedule needs at least one node and one partition")
        self.seed = seed
        self.nodes = nodes
        self.partitions = partitions
        self.timing = timing or Timing()
        self._rng = random.Random(seed)
        self._cycle: list[str] = []
        self._number = 0

    def _uniform(self, bounds: tuple[float, float]) -> float:
        low, high = bounds
        return round(self._rng.uniform(low, high), 2)

    def next(self) -> FaultStep:
        if not self._cycle:
            self._cycle = list(self.kinds)
            self._rng.shuffle(self._cycle)
        kind = self._cycle.pop(0)
        self._number += 1
        gap = self._uniform(self.timing.gap)
        hold = self._uniform(self.timing.hold_range(kind))
        node: int | None = None
        partition: int | None = None
        if kind in MEMBER_KINDS:
            return FaultStep(self._number, kind, gap, hold, member=self._rng.randint(1, self.members))
        # Drawn only with group consumers: a run without them keeps its seeds' schedules.
        if self.members and kind in COORDINATOR_KINDS and self._rng.random() < self.timing.coordinator_bias:
            return FaultStep(self._number, kind, gap, hold, coordinator=True)
        if kind == "restart":
            node = self._rng.randint(1, self.nodes)  # the first node of the roll; the others follow in order
        elif self._rng.random() < self.timing.leader_bias:
            partition = self._rng.randrange(self.partitions)
        else:
            node = self._rng.randint(1, self.nodes)
        return FaultStep(self._number, kind, gap, hold, node, partition)

    def take(self, count: int) -> list[FaultStep]:
        return [self.next() for _ in range(count)]


def parse_steps(text: str, nodes: int, gap: float = 1.0, members: int = 0) -> list[FaultStep]:
    """A fixed schedule: C{KIND:TARGET:HOLD,...}, TARGET C{nN} (node N) or C{pP} (the leader of
    partition P when the fault starts), C{g} (the group's coordinator) or, for a member fault,
    C{mM} (member M); HOLD in seconds; each step after C{gap} seconds of calm.
    C{"kill:p0:1.5,stop:p0:3"} kills partition 0's leader for 1.5 s, then stops the next one."""
    steps = []
    for number, item in enumerate((i.strip() for i in text.split(",") if i.strip()), 1):
        parts = item.split(":")
        if len(parts) != 3:
            raise ScheduleError(f"--steps {item!r}: give KIND:TARGET:HOLD, e.g. kill:p0:1.5 or stop:n2:3")
        kind, target, hold_text = parts
        if kind not in KINDS:
            raise ScheduleError(f"--steps {item!r}: unknown fault {kind!r}: choose among {', '.join(KINDS)}")
        try:
            hold = float(hold_text)
            index = int(target[1:]) if target != "g" else 0
        except ValueError:
            raise ScheduleError(f"--steps {item!r}: TARGET is nN, pP, g or mM, HOLD a number of seconds") from None
        if kind in MEMBER_KINDS:
            if target[:1] != "m" or not 1 <= index <= members:
                raise ScheduleError(f"--steps {item!r}: a member fault's TARGET is m1..m{members} (--group-consumers)")
            steps.append(FaultStep(number, kind, gap, hold, member=index))
        elif target == "g":
            if not members or kind not in COORDINATOR_KINDS:
                raise ScheduleError(f"--steps {item!r}: TARGET g (the group's coordinator) takes kill, stop or "
                                    f"partition, with --group-consumers")
            steps.append(FaultStep(number, kind, gap, hold, coordinator=True))
        elif target[:1] == "n" and 1 <= index <= nodes:
            steps.append(FaultStep(number, kind, gap, hold, node=index))
        elif target[:1] == "p" and index >= 0:
            steps.append(FaultStep(number, kind, gap, hold, partition=index))
        else:
            raise ScheduleError(f"--steps {item!r}: TARGET is n1..n{nodes} or pP (a partition's leader)")
    if not steps:
        raise ScheduleError("--steps names no step")
    return steps


def roll_order(first: int, nodes: int) -> list[int]:
    """The nodes of a rolling restart that starts at C{first}: C{first}, C{first+1}, ... wrapping."""
    return [(first - 1 + i) % nodes + 1 for i in range(nodes)]
