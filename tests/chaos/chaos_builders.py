"""A small builder for hand-made histories: ids and times come in call order."""

from __future__ import annotations

from collections.abc import Sequence

from streamlog.chaos.history import FAIL, INFO, OK, Drain, Fault, History, Poll, Send, Value


class Builder:
    """Append operations in invoke order; each gets the next id and a one-second slot."""

    def __init__(self, topic: str = "t") -> None:
        self.topic = topic
        self.history = History()
        self._id = 0

    def _next(self) -> tuple[int, float]:
        self._id += 1
        return self._id, float(self._id)

    def ok(self, process: str, value: Value, partition: int, offset: int, *, idempotent: bool = False,
           producer: str | None = None) -> int:
        i, t = self._next()
        self.history.sends.append(Send(i, process, t, t + 0.5, self.topic, value, OK, partition, offset,
                                       producer, idempotent))
        return i

    def fail(self, process: str, value: Value, code: str = "MESSAGE_TOO_LARGE", *, partition: int | None = 0,
             idempotent: bool = False) -> int:
        i, t = self._next()
        self.history.sends.append(Send(i, process, t, t + 0.5, self.topic, value, FAIL, partition, None,
                                       None, idempotent, code))
        return i

    def info(self, process: str, value: Value, code: str = "TIMEOUT", *, partition: int | None = 0,
             idempotent: bool = False) -> int:
        i, t = self._next()
        self.history.sends.append(Send(i, process, t, t + 0.5, self.topic, value, INFO, partition, None,
                                       None, idempotent, code))
        return i

    def poll(self, process: str, partition: int, offset: int, messages: Sequence[tuple[int, Value]],
             next_offset: int | None = None, *, log_start_offset: int = 0) -> int:
        i, t = self._next()
        if next_offset is None:
            next_offset = messages[-1][0] + 1 if messages else offset
        self.history.polls.append(Poll(i, process, t, t + 0.5, self.topic, partition, offset, OK,
                                       tuple(messages), next_offset, log_start_offset))
        return i

    def poll_failed(self, process: str, partition: int, offset: int, code: str = "OFFSET_OUT_OF_RANGE", *,
                    log_start_offset: int | None = None) -> int:
        i, t = self._next()
        self.history.polls.append(Poll(i, process, t, t + 0.5, self.topic, partition, offset, FAIL,
                                       (), None, log_start_offset, code))
        return i

    def fault(self, kind: str, node: str, start: float, end: float | None) -> None:
        self.history.faults.append(Fault(kind, node, start, end))

    def drain(self, partition: int, end_offset: int) -> None:
        self.history.drains.append(Drain(self.topic, partition, end_offset, float(self._id)))
