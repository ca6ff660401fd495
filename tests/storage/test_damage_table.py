"""What the node does with each kind of damage to each kind of file it keeps.

One row per (file, damage): the data directory of a node that stopped cleanly
(everything synced and checkpointed), or of one that crashed with an unsynced
tail, is damaged, then a broker starts on it and a client polls every
partition from offset 0 to the end.  The outcome is one of:

  - C{repaired}: every record is served (derived files are rebuilt, leftovers removed, strays ignored);
  - C{cut}: an unsynced tail is cut, everything synced is served, the next append continues densely;
  - C{unavailable}: that partition answers C{PARTITION_UNAVAILABLE} (found at start, or when a read
    reaches the damage) and its error names the damaged file; the other partition serves on;
  - C{refuses}: the node does not start, with one line naming the file.

Whatever the row, no answer is invalid JSON, no offset is served twice or out
of place, and no synced record goes missing from an answer that claims to be
complete.  docs/storage.md ("Damage") is this table in prose.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import attrs
import orjson
import pytest
from storage_helpers import append_config, append_noop, fill
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from streamlog.cluster.directory import ALONE
from streamlog.raft.core import HardState
from streamlog.storage.base import TopicConfig
from streamlog.storage.checkpoint import CHECKPOINT_FILE
from streamlog.storage.errors import CannotLoad
from streamlog.storage.hardstate import HARD_STATE_FILE, HardStateStore
from streamlog.storage.segmented import TOPIC_FILE, SegmentedStorage
from streamlog.testing import BrokerHarness

SETTINGS = dict(index_interval_bytes=256, cache_bytes=0)
CONFIG = TopicConfig(segment_bytes=1_100)  # two 505-byte batches per segment (bookkeeping entries between)
SYNCED = 50  # records of partition 0: ten batches of five, in five segments
TAIL = 10  # records appended after the last checkpoint in the crash images
OTHER = 10  # records of partition 1, never damaged


def build(data: str, crash: bool) -> None:
    storage = SegmentedStorage(data, CONFIG, **SETTINGS)
    p0, p1 = storage.create_topic("t", 2, TopicConfig())
    append_config(p0, (ALONE,))  # the member id of a node started alone, which serves this data
    for i in range(SYNCED // 5):  # a no-op (a new leader's) before every third batch
        if i % 3 == 0:
            append_noop(p0, term=i + 1)
        fill(p0, 1)
    fill(p1, OTHER // 5)
    storage.close()
    # Terms and votes of a few elections, in several rounds.
    hard_state = HardStateStore(os.path.join(data, HARD_STATE_FILE), clock=Clock(),
                                run_in_thread=lambda f, *args: maybeDeferred(f, *args))
    for term in range(1, 5):
        hard_state.save("t-0", HardState(term, ALONE))
        hard_state.save("t-1", HardState(term, None))
        hard_state._clock.advance(0)
    hard_state.close()
    if crash:
        # A node that wrote more after its checkpoint, then died: copy its files while it runs.
        storage = SegmentedStorage(data, CONFIG, **SETTINGS)
        [p0, _] = storage.load()["t"][1]
        fill(p0, TAIL // 5)
        image = data + ".crash"
        shutil.copytree(data, image)
        storage.close()
        shutil.rmtree(data)
        os.rename(image, data)


# --- where the damage goes ----------------------------------------------------------------


def partition_dir(data: str) -> str:
    return os.path.join(data, "t", "0")


def segment(which: int, ext: str = ".log") -> Callable[[str], str]:
    def path(data: str) -> str:
        logs = sorted(n for n in os.listdir(partition_dir(data)) if n.endswith(".log"))
        return os.path.join(partition_dir(data), logs[which][: -len(".log")] + ext)

    return path


FIRST, MIDDLE, LAST = 0, 2, -1


def named(*parts: str) -> Callable[[str], str]:
    return lambda data: os.path.join(data, *parts)


# --- kinds of damage ------------------------------------------------------------------------


def missing(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def truncated(path: str) -> None:
    size = os.path.getsize(path)
    os.truncate(path, size - 3 if path.endswith("index") else size // 2)


def zero_length(path: str) -> None:
    os.truncate(path, 0)


def flipped(at: int | None = None) -> Callable[[str], None]:
    """Invert 8 bytes at C{at} (the middle of the file if None)."""

    def damage(path: str) -> None:
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            start = len(data) // 2 if at is None else at
            for i in range(start, min(start + 8, len(data))):
                data[i] ^= 0xFF
            f.seek(0)
            f.write(data)

    return damage


def all_ones(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\xff" * size)


def reparsed(change: Callable[[dict], None]) -> Callable[[str], None]:
    """Change a JSON file's content so that it still parses (its checksum no longer matches)."""

    def damage(path: str) -> None:
        with open(path, "rb") as f:
            content = orjson.loads(f.read())
        change(content)
        with open(path, "wb") as f:
            f.write(orjson.dumps(content))

    return damage


def appended(data: bytes) -> Callable[[str], None]:
    def damage(path: str) -> None:
        with open(path, "ab") as f:
            f.write(data)

    return damage


def stray(name: str, content: bytes = b"stray") -> Callable[[str], None]:
    """A file C{name} created next to C{path}; a name ending in / is a directory."""

    def damage(path: str) -> None:
        target = os.path.join(os.path.dirname(path), name)
        if name.endswith("/"):
            os.makedirs(target)
        else:
            with open(target, "wb") as f:
                f.write(content)

    return damage


def both_copies_of_a_round(path: str) -> None:
    """Damage both copies of the hard-state file's second round (a round gone, not a torn end)."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        starts = [i for i in range(len(data)) if data.startswith(b"SH\x01", i)]
        for start in starts[2:4]:
            data[start + 24] ^= 0xFF
        f.seek(0)
        f.write(data)


def stray_between(path: str) -> None:
    """A segment file named between the middle segment and the one after it (not in the log)."""
    directory = os.path.dirname(path)
    firsts = sorted(int(n[:-4]) for n in os.listdir(directory) if n.endswith(".log"))
    middle = firsts.index(int(os.path.basename(path)[:-4]))
    name = f"{firsts[middle] + 1:020d}.log"
    assert firsts[middle] + 1 < firsts[middle + 1]
    stray(name, b"SL" * 100)(path)
    with open(os.path.join(directory, "..", "..", "stray-name"), "w") as f:
        f.write(name)


def bump(field: str) -> Callable[[dict], None]:
    def change(content: dict) -> None:
        content[field] += 1

    return change


# --- the table --------------------------------------------------------------------------------


@attrs.frozen
class Row:
    file: str
    damage: str
    where: Callable[[str], str]
    do: Callable[[str], None]
    outcome: str  # repaired, cut, unavailable, refuses
    at: str = ""  # for unavailable: "start" or "read"
    crash: bool = False  # damage the crash image (a tail after the checkpoint)
    after: Callable[[str], object] | None = None  # a further check on the data dir

    @property
    def id(self) -> str:
        return f"{self.file}-{self.damage}".replace(" ", "_")


def exists(where: Callable[[str], str]) -> Callable[[str], object]:
    def check(data: str) -> None:
        assert os.path.exists(where(data))

    return check


def gone(where: Callable[[str], str]) -> Callable[[str], object]:
    def check(data: str) -> None:
        assert not os.path.exists(where(data))

    return check


TABLE = [
    # Segment data files: the synced records themselves.
    Row("first .log", "missing", segment(FIRST), missing, "unavailable", "start"),
    Row("middle .log", "missing", segment(MIDDLE), missing, "unavailable", "start"),
    Row("last .log", "missing", segment(LAST), missing, "unavailable", "start"),
    Row("first .log", "truncated", segment(FIRST), truncated, "unavailable", "start"),
    Row("middle .log", "truncated", segment(MIDDLE), truncated, "unavailable", "start"),
    Row("last .log", "truncated", segment(LAST), truncated, "unavailable", "start"),
    # (Found at start-up since the replica rebuilds its producer state from every batch: issue 10.)
    Row("first .log", "corrupted", segment(FIRST), flipped(100), "unavailable", "start"),
    Row("middle .log", "corrupted", segment(MIDDLE), flipped(100), "unavailable", "start"),
    # (The last segment holds one batch: it lies in the last index interval, which start-up reads.)
    Row("last .log", "corrupted", segment(LAST), flipped(300), "unavailable", "start"),
    Row("first .log", "zero-length", segment(FIRST), zero_length, "unavailable", "start"),
    Row("middle .log", "zero-length", segment(MIDDLE), zero_length, "unavailable", "start"),
    Row("last .log", "zero-length", segment(LAST), zero_length, "unavailable", "start"),
    Row("middle .log", "extra bytes", segment(MIDDLE), appended(b"garbage"), "repaired"),
    Row("last .log", "extra bytes", segment(LAST), appended(b"SL\x01garbage"), "cut"),
    Row(".log", "stray in the middle", segment(MIDDLE), stray_between, "repaired",
        after=lambda data: exists(named("t", "0", open(os.path.join(data, "stray-name")).read()))(data)),
    Row(".log", "stray after the end", segment(LAST), stray(f"{99:020d}.log", b"SL" * 100), "repaired"),
    # The unsynced tail of a crashed node: cut where it stops being whole.
    Row("tail .log", "truncated", segment(LAST), truncated, "cut", crash=True),
    Row("tail .log", "corrupted", segment(LAST), flipped(), "cut", crash=True),
    Row("tail .log", "missing", segment(LAST), missing, "cut", crash=True),
    # Offset and time indexes: derived from the data, rebuilt.
    Row("middle .index", "missing", segment(MIDDLE, ".index"), missing, "repaired", after=exists(segment(MIDDLE, ".index"))),
    Row("middle .index", "truncated", segment(MIDDLE, ".index"), truncated, "repaired"),
    Row("middle .index", "corrupted", segment(MIDDLE, ".index"), all_ones, "repaired"),
    Row("middle .index", "zero-length", segment(MIDDLE, ".index"), zero_length, "repaired"),
    Row("last .index", "missing", segment(LAST, ".index"), missing, "repaired", after=exists(segment(LAST, ".index"))),
    Row("last .index", "corrupted", segment(LAST, ".index"), all_ones, "repaired"),
    Row(".index", "stray", segment(LAST), stray(f"{99:020d}.index"), "repaired",
        after=gone(named("t", "0", f"{99:020d}.index"))),
    Row("middle .timeindex", "missing", segment(MIDDLE, ".timeindex"), missing, "repaired"),
    Row("middle .timeindex", "truncated", segment(MIDDLE, ".timeindex"), truncated, "repaired"),
    Row("middle .timeindex", "corrupted", segment(MIDDLE, ".timeindex"), all_ones, "repaired"),
    Row("middle .timeindex", "zero-length", segment(MIDDLE, ".timeindex"), zero_length, "repaired"),
    Row("last .timeindex", "corrupted", segment(LAST, ".timeindex"), all_ones, "repaired"),
    # The recovery checkpoint: without it every segment is validated; damaged, the partition stops.
    Row("recovery-checkpoint", "missing", named("t", "0", CHECKPOINT_FILE), missing, "repaired",
        after=exists(named("t", "0", CHECKPOINT_FILE))),
    Row("recovery-checkpoint", "truncated", named("t", "0", CHECKPOINT_FILE), truncated, "unavailable", "start"),
    Row("recovery-checkpoint", "corrupted", named("t", "0", CHECKPOINT_FILE), reparsed(bump("next_offset")), "unavailable", "start"),
    Row("recovery-checkpoint", "zero-length", named("t", "0", CHECKPOINT_FILE), zero_length, "unavailable", "start"),
    Row("recovery-checkpoint", "stray .tmp", named("t", "0", CHECKPOINT_FILE), stray(CHECKPOINT_FILE + ".tmp"), "repaired",
        after=gone(named("t", "0", CHECKPOINT_FILE + ".tmp"))),
    # The topic's own file: without it the node cannot know the topic; it refuses to guess.
    Row("topic.json", "missing", named("t", TOPIC_FILE), missing, "refuses"),
    Row("topic.json", "truncated", named("t", TOPIC_FILE), truncated, "refuses"),
    Row("topic.json", "corrupted", named("t", TOPIC_FILE), reparsed(bump("partitions")), "refuses"),
    Row("topic.json", "zero-length", named("t", TOPIC_FILE), zero_length, "refuses"),
    Row("topic.json", "stray .tmp", named("t", TOPIC_FILE), stray(TOPIC_FILE + ".tmp"), "repaired",
        after=gone(named("t", TOPIC_FILE + ".tmp"))),
    # Every Raft group's term and vote: forgetting a vote could make the node vote twice in a term.
    Row("hardstate", "missing", named(HARD_STATE_FILE), missing, "refuses"),
    Row("hardstate", "truncated", named(HARD_STATE_FILE), truncated, "repaired"),  # a torn end: the rounds after it go
    Row("hardstate", "corrupted", named(HARD_STATE_FILE), flipped(), "repaired"),  # one copy of a round: the other is used
    Row("hardstate", "both copies corrupted", named(HARD_STATE_FILE), both_copies_of_a_round, "refuses"),
    Row("hardstate", "zero-length", named(HARD_STATE_FILE), zero_length, "refuses"),
    Row("hardstate", "stray .tmp", named(HARD_STATE_FILE), stray(HARD_STATE_FILE + ".tmp"), "repaired",
        after=gone(named(HARD_STATE_FILE + ".tmp"))),
    # What an interrupted upgrade from storage format 1 leaves, in a topic already upgraded.
    Row("upgrade leftovers", ".v2-<p> and .v1-<p>", named("t", "0"),
        lambda p: (stray("../.v2-0/")(p + "/x"), stray("../.v1-1/")(p + "/x")), "repaired",
        after=gone(named("t", ".v2-0"))),
    # Whole directories.
    Row("partition directory", "missing", partition_dir, missing, "unavailable", "start"),
    Row("partition directory", "stray", partition_dir, stray("2/"), "repaired", after=exists(named("t", "2"))),
    Row("data directory", "stray entries", named("t"), lambda p: (stray("lost+found/")(p), stray("notes.txt")(p)), "repaired",
        after=exists(named("lost+found"))),
]


@pytest.fixture(scope="module")
def images():
    """The two undamaged data directories, built once; each row damages a copy."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="streamlog-damage-", dir=base)
    for crash in (False, True):
        build(os.path.join(root, f"crash-{crash}"), crash)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def poll_through(conn, partition: int) -> tuple[list[int], dict | None]:
    """Poll from 0 to the high watermark in small steps; return the offsets served and the error that stopped it."""
    offsets: list[int] = []
    offset = 0
    for _ in range(1_000):
        answer = conn.call("Poll", {"topic": "t", "partition": partition, "offset": offset, "max_messages": 3})
        if "error" in answer:
            return offsets, answer["error"]
        result = answer["result"]
        served = [m["offset"] for m in result["messages"]]
        assert served == list(range(offset, offset + len(served))), f"out of place: {served} from {offset}"
        assert result["next_offset"] == offset + len(served)
        offsets.extend(served)
        offset = result["next_offset"]
        if offset == result["high_watermark"]:
            return offsets, None
        assert served, "an answer that is neither empty at the end nor moving"
    raise AssertionError("polling never reached the end")


@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_damage(row, images, tmp_path, clock):
    data = str(tmp_path / "data")
    shutil.copytree(os.path.join(images, f"crash-{row.crash}"), data)
    damaged = row.where(data)
    row.do(damaged)
    storage = SegmentedStorage(data, CONFIG, **SETTINGS)
    if row.outcome == "refuses":
        with pytest.raises(CannotLoad) as refused:
            BrokerHarness(storage=storage, clock=clock)
        message = str(refused.value)
        assert "\n" not in message and os.path.basename(damaged) in message
        storage.close()
        return

    h = BrokerHarness(storage=storage, clock=clock)
    try:
        log = h.broker.topics["t"].partitions[0].log
        found_at_start = log.failed is not None
        conn = h.connect()
        offsets, error = poll_through(conn, 0)
        written = SYNCED + (TAIL if row.crash else 0)
        if row.outcome == "repaired":
            assert error is None and offsets == list(range(written))
        elif row.outcome == "cut":
            assert error is None
            assert SYNCED <= len(offsets) < written or (not row.crash and len(offsets) == SYNCED)
            assert offsets == list(range(len(offsets)))
            assert conn.call("Send", {"topic": "t", "partition": 0, "value": "next"})["result"]["offset"] == len(offsets)
        else:
            assert row.outcome == "unavailable"
            assert error is not None and error["code"] == "PARTITION_UNAVAILABLE", error
            assert found_at_start == (row.at == "start")
            assert offsets == list(range(len(offsets)))  # what came before the damage was right
            assert conn.call("Poll", {"topic": "t", "offset": 0})["error"]["code"] == "PARTITION_UNAVAILABLE"
            assert os.path.basename(damaged) in str(log.failed)
            send = conn.call("Send", {"topic": "t", "partition": 0, "value": "refused"})
            assert send["error"]["code"] == "PARTITION_UNAVAILABLE"
        # The other partition serves on, whatever happened to this one.
        assert poll_through(conn, 1) == (list(range(OTHER)), None)
        if row.after is not None:
            row.after(data)
    finally:
        h.stop()
        h.broker.close()


def test_every_damage_row_is_distinct():
    assert len({row.id for row in TABLE}) == len(TABLE)
