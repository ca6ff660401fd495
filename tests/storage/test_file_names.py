"""No topic name can make the storage produce a file name or path the file system refuses.

The longest valid name (249 characters) goes through every step that names a
file: create (C{topic.json.tmp}), append and roll (segment trios), a
checkpoint (C{recovery-checkpoint.tmp}), an index rebuild of a closed segment
(C{.index.tmp}), restart, delete (the hidden C{.deleted-...} directory), and
the upgrade from storage format 1 (C{.v2-<p>}, C{.v1-<p>}).
"""

from __future__ import annotations

import os

import pytest
from storage_helpers import fill, read_all

from streamlog.storage import segmented
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import CannotLoad, InvalidTopicName
from streamlog.storage.segmented import LONGEST_FIXED_NAME, SegmentedStorage

LONGEST = "a" * 249


@pytest.fixture
def names(monkeypatch):
    """Every file or directory name the storage asks the OS to create or rename to."""
    seen: list[str] = []
    real_open, real_mkdir, real_rename, real_replace = os.open, os.mkdir, os.rename, os.replace

    def note(path) -> None:
        seen.append(os.path.basename(os.fsdecode(path)))

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            note(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        note(path)
        return real_mkdir(path, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        note(dst)
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        note(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def test_the_longest_topic_name_lives_and_dies_without_a_refused_file_name(tmp_path, names):
    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_100))
    [log] = storage.create_topic(LONGEST, 1, TopicConfig())
    fill(log, 6)  # rolls twice
    assert log.segment_count == 3
    log.sync()
    assert log.checkpoint(sync=False)  # checkpoints the new segment
    storage.close()
    closed = sorted(n for n in os.listdir(tmp_path / LONGEST / "0") if n.endswith(".index"))[0]
    os.unlink(tmp_path / LONGEST / "0" / closed)  # its rebuild writes <base>.index.tmp

    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_100))
    [log] = storage.load()[LONGEST][1]
    assert read_all(log) == list(range(30))
    storage.delete_topic(LONGEST)
    storage.close()
    assert os.listdir(tmp_path) == ["hardstate"]
    storage = SegmentedStorage(str(tmp_path))
    assert storage.load() == {}
    storage.close()

    # The same name, written by storage format 1, upgraded.
    import format1.segmented as v1
    from format1.base import RecordBatch as V1Batch
    from format1.base import TopicConfig as V1Config
    from storage_helpers import make_batch

    made_before = set(names)
    names.clear()
    old = v1.SegmentedStorage(str(tmp_path / "v1"), V1Config(segment_bytes=1_100))
    [v1_log] = old.create_topic(LONGEST, 1, V1Config())
    for base in range(0, 30, 5):
        b = make_batch(base, 5)
        v1_log.append(V1Batch(b.base_offset, b.count, 0, b.first_timestamp, b.max_timestamp, b.payload))
    old.close()
    storage = SegmentedStorage(str(tmp_path / "v1"), TopicConfig(segment_bytes=1_100))
    [log] = storage.load()[LONGEST][1]
    assert read_all(log) == list(range(30))
    storage.close()

    made = set(names) | made_before
    for expected in (LONGEST, "topic.json.tmp", "recovery-checkpoint.tmp", f"{closed}.tmp", f"{5:020d}.timeindex",
                     "hardstate.tmp", ".v2-0", ".v1-0"):
        assert expected in made, f"the test did not make {expected}"
    deleted = [n for n in made if n.startswith(".deleted-")]
    assert deleted and all(len(n) == LONGEST_FIXED_NAME for n in deleted)
    assert max(len(n.encode()) for n in made) == 249


def test_names_longer_than_the_file_system_allows_are_refused_as_invalid(tmp_path, monkeypatch):
    real_pathconf = os.pathconf
    monkeypatch.setattr(os, "pathconf", lambda p, n: 143 if n == "PC_NAME_MAX" else real_pathconf(p, n))
    storage = SegmentedStorage(str(tmp_path))
    assert storage.max_topic_name == 143
    with pytest.raises(InvalidTopicName, match="at most 143"):
        storage.create_topic("b" * 144, 1, TopicConfig())
    assert os.listdir(tmp_path) == []  # refused before anything was made (not even the hard-state file)
    storage.create_topic("b" * 143, 1, TopicConfig())
    storage.delete_topic("b" * 143)
    storage.close()


def test_the_path_budget_below_a_topic_counts_every_file_the_storage_writes_there():
    from streamlog.storage import producer_snapshots

    partition = "9" * 10  # the partition number the budget leaves room for
    longest = [f"/.v1-{partition}/{0:020d}.timeindex.tmp", f"/{partition}/{producer_snapshots.file_name(0)}.tmp"]
    assert segmented._LONGEST_BELOW_TOPIC == max(len(p) for p in longest)


def test_a_data_dir_path_too_long_for_any_topic_is_refused_at_start(tmp_path, monkeypatch):
    real_pathconf = os.pathconf
    # PATH_MAX counts the final NUL; below the data dir come "/", the topic, and the longest tail.
    no_room = len(os.fsencode(str(tmp_path))) + 1 + 1 + segmented._LONGEST_BELOW_TOPIC
    path_max = [no_room]
    monkeypatch.setattr(os, "pathconf", lambda p, n: path_max[0] if n == "PC_PATH_MAX" else real_pathconf(p, n))
    with pytest.raises(CannotLoad, match="shorter data directory path"):
        SegmentedStorage(str(tmp_path))
    path_max[0] = no_room + 10
    storage = SegmentedStorage(str(tmp_path))
    assert storage.max_topic_name == 10
    with pytest.raises(InvalidTopicName, match="at most 10"):
        storage.create_topic("c" * 11, 1, TopicConfig())


def test_the_broker_answers_a_name_too_long_for_the_file_system_invalid_topic(tmp_path, monkeypatch, clock):
    from streamlog.testing import BrokerHarness

    real_pathconf = os.pathconf
    monkeypatch.setattr(os, "pathconf", lambda p, n: 143 if n == "PC_NAME_MAX" else real_pathconf(p, n))
    h = BrokerHarness(storage=SegmentedStorage(str(tmp_path)), clock=clock)
    conn = h.connect()
    for method, params in [("Send", {"topic": "d" * 144, "value": 1}), ("CreateTopic", {"topic": "d" * 144})]:
        error = conn.call(method, params)["error"]
        assert error["code"] == "INVALID_TOPIC" and "at most 143" in error["message"]
    assert conn.call("Send", {"topic": "d" * 143, "value": 1})["result"]["offset"] == 0
    assert not conn.closed
    h.stop()
    h.broker.close()
