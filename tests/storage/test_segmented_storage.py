"""SegmentedStorage: topics on disk, created and deleted crash-safely."""

from __future__ import annotations

import os

import orjson
import pytest
from storage_helpers import fill, read_all

from streamlog.storage.base import TopicConfig
from streamlog.storage.segmented import SegmentedStorage


def test_create_then_load_after_restart(tmp_path):
    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_000))
    logs = storage.create_topic("orders", 3, TopicConfig(retention_ms=60_000))
    for i, log in enumerate(logs):
        fill(log, i + 1)
    storage.close()
    meta = orjson.loads((tmp_path / "orders" / "topic.json").read_bytes())
    assert meta["partitions"] == 3 and meta["config"]["retention_ms"] == 60_000
    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_000))
    loaded = storage.load()
    config, logs = loaded["orders"]
    assert config == TopicConfig(retention_ms=60_000)
    assert [log.end_offset for log in logs] == [5, 10, 15]
    assert [log.log.last_index for log in logs] == [1, 2, 3]  # each a Raft log underneath
    assert read_all(logs[2]) == list(range(15))
    storage.checkpoint()
    storage.close()


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "x" * 250, "sp ace", "é"])
def test_bad_topic_names_are_refused(tmp_path, name):
    storage = SegmentedStorage(str(tmp_path))
    with pytest.raises(ValueError, match="invalid topic name"):
        storage.create_topic(name, 1, TopicConfig())


def test_duplicate_topic_is_refused(tmp_path):
    storage = SegmentedStorage(str(tmp_path))
    storage.create_topic("t", 1, TopicConfig())
    with pytest.raises(ValueError, match="exists"):
        storage.create_topic("t", 1, TopicConfig())
    storage.close()


def test_delete_topic_removes_it_for_good(tmp_path):
    storage = SegmentedStorage(str(tmp_path))
    fill(storage.create_topic("gone", 2, TopicConfig())[0], 3)
    storage.create_topic("kept", 1, TopicConfig())
    storage.delete_topic("gone")
    storage.delete_topic("never-existed")
    assert sorted(os.listdir(tmp_path)) == ["hardstate", "kept"]
    storage.close()
    storage = SegmentedStorage(str(tmp_path))
    assert list(storage.load()) == ["kept"]
    storage.close()


def test_crash_mid_delete_or_mid_create_is_finished_at_load(tmp_path):
    storage = SegmentedStorage(str(tmp_path))
    fill(storage.create_topic("a", 1, TopicConfig())[0], 2)
    storage.close()
    os.rename(tmp_path / "a", tmp_path / ".deleted-a-123")  # crashed after the rename
    os.makedirs(tmp_path / "half" / "0")  # crashed before topic.json was written
    storage = SegmentedStorage(str(tmp_path))
    assert storage.load() == {}
    assert os.listdir(tmp_path) == ["hardstate"]
    storage.create_topic("half", 1, TopicConfig())
    storage.close()


def test_defaults_apply_where_the_topic_says_none(tmp_path):
    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_100))
    log = storage.create_topic("t", 1, TopicConfig())[0]
    fill(log, 6)
    assert log.segment_count == 3
    storage.close()


def test_create_never_overwrites_a_topic_on_disk(tmp_path):
    storage = SegmentedStorage(str(tmp_path))
    fill(storage.create_topic("t", 1, TopicConfig())[0], 2)
    storage.close()
    storage = SegmentedStorage(str(tmp_path))
    with pytest.raises(ValueError, match="exists"):
        storage.create_topic("t", 1, TopicConfig())
    assert read_all(storage.load()["t"][1][0]) == list(range(10))
    storage.close()


def test_running_out_of_descriptors_at_load_refuses_to_start_with_what_to_do(tmp_path, monkeypatch):
    import errno

    from streamlog.storage.errors import CannotLoad

    storage = SegmentedStorage(str(tmp_path))
    storage.create_topic("t", 4, TopicConfig())
    storage.close()
    before = len(os.listdir("/proc/self/fd"))
    real_open = os.open
    opened = [0]

    def emfile_after_five(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            opened[0] += 1
            if opened[0] > 5:
                raise OSError(errno.EMFILE, "Too many open files", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", emfile_after_five)
    storage = SegmentedStorage(str(tmp_path))
    with pytest.raises(CannotLoad, match="raise the open-file limit"):
        storage.load()
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == before  # the partitions opened before it were closed
