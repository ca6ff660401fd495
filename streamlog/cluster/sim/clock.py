"""One node's view of the simulation's single Clock: it can be killed (SIGKILL) or paused (SIGSTOP).

Every node of the simulated cluster runs on one C{twisted.internet.task.Clock}.
A L{NodeClock} is what one node is given as its clock: its C{callLater}
goes to the shared Clock, but the call runs only while the node lives and
is not paused.  A paused node's due calls are held and run, in the order
they fell due, once it is resumed (a process resumed by SIGCONT runs its
overdue timers at once); a killed node's calls never run again.  Anything
else that must stop with the node (the network's deliveries to it, its
disk's fsync completions) goes through L{run} or checks L{alive} and
L{paused}.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock
from twisted.logger import Logger


class NodeClock:
    """An C{IReactorTime} for one node, over the shared C{Clock}."""

    def __init__(self, clock: Clock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.alive = True
        self.paused = False
        self._held: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        #: Called (with no argument) when the node is resumed: the network delivers what it held.
        self.on_resume: list[Callable[[], object]] = []

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall:  # noqa: N802
        return self.clock.callLater(delay, self.run, f, *args, **kw)

    def getDelayedCalls(self) -> list[DelayedCall]:  # noqa: N802
        return self.clock.getDelayedCalls()

    def run(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Run C{f} now as this node (held while it is paused, dropped once it is dead)."""
        if not self.alive:
            return
        if self.paused:
            self._held.append((f, args, kw))
            return
        f(*args, **kw)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: what fell due meanwhile runs now, in order, then the network catches up."""
        if not self.alive or not self.paused:
            return
        self.paused = False
        held, self._held = self._held, []
        for f, args, kw in held:
            if not self.alive or self.paused:
                self._held.append((f, args, kw))
                continue
            f(*args, **kw)
        for hook in list(self.on_resume):
            hook()

    def kill(self) -> None:
        """SIGKILL: nothing of this node runs again."""
        self.alive = False
        self._held = []
        self.on_resume = []


class SimClock(Clock):
    """The shared Clock, on a heap: C{Clock} sorts its whole list at every C{callLater},
    which was a quarter of a simulation's time.  Calls due at the same time run in the
    order they were scheduled, as with C{Clock}."""

    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._seq = 0

    def _push(self, call: DelayedCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (call.getTime(), self._seq, call))

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall:  # noqa: N802
        call = DelayedCall(self.seconds() + delay, f, args, kw, self._cancelled, self._push, seconds=self.seconds)
        self._push(call)
        return call

    def _cancelled(self, call: DelayedCall) -> None:
        pass  # left on the heap, skipped when it comes up

    def _live(self, entry: tuple[float, int, DelayedCall]) -> bool:
        at, _, call = entry
        return not call.cancelled and not call.called and call.getTime() == at

    def _settle_head(self) -> None:
        """Drop dead entries off the top; one whose call was reset later goes back at its new time."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            _, _, call = heapq.heappop(heap)
            if not call.cancelled and not call.called and call.getTime() > call.time - 1e-12:
                if call.delayed_time:
                    call.activate_delay()
                    self._push(call)

    def next_time(self) -> float | None:
        """When the next live call is due (None: nothing is scheduled)."""
        self._settle_head()
        return self._heap[0][0] if self._heap else None

    def getDelayedCalls(self) -> list[DelayedCall]:  # noqa: N802
        return [entry[2] for entry in self._heap if self._live(entry)]

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        heap = self._heap
        while heap:
            self._settle_head()
            if not heap:
                break
            entry = heap[0]
            if entry[0] > self.rightNow:
                break
            heapq.heappop(heap)
            call = entry[2]
            call.called = 1
            try:
                call.func(*call.args, **call.kw)
            except Exception:
                # As the reactor does: logged (the simulator counts it as a failure), and on.
                self._log.failure("a timer raised: {call}", call=call)
