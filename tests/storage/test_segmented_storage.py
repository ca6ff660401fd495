"""SegmentedStorage: topics on disk, created and deleted crash-safely."""

from __future__ import annotations

import os
import threading

import orjson
import pytest
from storage_helpers import append_batch, fill, make_batch, read_all

from streamlog.storage import durability
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import CannotLoad, InvalidTopicName, NameTaken
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


@pytest.mark.parametrize("kind", ["file", "symlink", "directory with data", "topic copied in"])
def test_a_name_taken_by_something_else_in_the_data_dir_is_refused_and_left_alone(tmp_path, kind):
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    path = tmp_path / "taken"
    if kind == "file":
        path.write_text("hi\n")  # an operator's notes.txt, or twistd.pid
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        path.symlink_to(tmp_path / "elsewhere")
    elif kind == "directory with data":
        (path / "0").mkdir(parents=True)
        (path / "0" / "00000000000000000000.log").write_bytes(b"someone's data")
    else:  # a whole topic copied into the data directory after start-up
        other = SegmentedStorage(str(tmp_path / "other"))
        fill(other.create_topic("taken", 1, TopicConfig())[0], 2)
        other.close()
        os.rename(tmp_path / "other" / "taken", path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(NameTaken, match="taken by") as refused:
        storage.create_topic("taken", 1, TopicConfig())
    assert isinstance(refused.value, InvalidTopicName)  # the broker answers INVALID_TOPIC
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    if kind == "file":
        assert path.read_text() == "hi\n"
    storage.create_topic("free", 1, TopicConfig())  # other names still work
    storage.close()


def test_an_unfinished_creation_under_the_name_is_still_replaced(tmp_path):
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    (tmp_path / "half" / "0").mkdir(parents=True)
    (tmp_path / "half" / "0" / "00000000000000000000.log").write_bytes(b"")
    (tmp_path / "half" / "topic.json.tmp").write_bytes(b"{")
    fill(storage.create_topic("half", 1, TopicConfig())[0], 1)
    assert sorted(os.listdir(tmp_path / "half")) == ["0", "topic.json"]
    storage.close()


@pytest.mark.parametrize("name", ["hardstate", "hardstate.tmp"])
def test_the_names_of_the_storages_own_files_are_refused_as_topics(tmp_path, name):
    # hardstate.tmp exists only while the hard-state file is compacted: a topic directory of that
    # name would make the next compaction (and the next start) fail.
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(NameTaken, match="hard-state file") as refused:
        storage.create_topic(name, 1, TopicConfig())
    assert isinstance(refused.value, InvalidTopicName)  # the broker answers INVALID_TOPIC
    assert sorted(os.listdir(tmp_path)) == before
    storage.close()
    reopened = SegmentedStorage(str(tmp_path))
    assert reopened.load() == {}
    reopened.close()


def test_a_format1_topic_under_the_hard_state_files_name_stops_the_start_with_what_to_do(tmp_path):
    import format1.segmented as v1
    from format1.base import TopicConfig as V1Config

    old = v1.SegmentedStorage(str(tmp_path))
    old.create_topic("hardstate", 1, V1Config())  # a valid topic name in format 1
    old.close()
    with pytest.raises(CannotLoad, match="rename its directory"):
        SegmentedStorage(str(tmp_path)).load()
    assert (tmp_path / "hardstate" / "topic.json").exists()  # left as it was
    os.rename(tmp_path / "hardstate", tmp_path / "renamed")
    storage = SegmentedStorage(str(tmp_path))
    assert list(storage.load()) == ["renamed"]  # upgraded under its new name
    storage.close()


# -- a closed log writes no checkpoint (review finding 4) ------------------------------------


def topic_with_a_due_checkpoint(tmp_path):
    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=400))
    storage.load()
    [old] = storage.create_topic("t", 1, TopicConfig(segment_bytes=400))
    for _ in range(6):
        append_batch(old, make_batch(old.end_offset, 3))
    old.log.sync()
    assert old.checkpoint_due  # the committer would now hand it to its checkpoint worker
    return storage, old


def test_a_checkpoint_of_a_deleted_topics_log_never_lands_in_the_recreated_topic(tmp_path):
    storage, old = topic_with_a_due_checkpoint(tmp_path)
    # The checkpoint worker passed its own `closed` check; meanwhile, on the reactor:
    storage.delete_topic("t")
    [new] = storage.create_topic("t", 1, TopicConfig(segment_bytes=400))
    assert old.log.checkpoint(sync=False) is False  # the worker resumes: the closed log writes nothing
    for log in storage.logs():
        log._release()  # power loss instead of a clean close
    storage.hard_state.close()
    again = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=400))
    topics = again.load()
    [reopened] = topics["t"][1]
    assert reopened.failed is None and reopened.end_offset == 0
    again.close()


def test_closing_a_log_waits_for_a_checkpoint_being_written(tmp_path, monkeypatch):
    """A checkpoint write that started before the close ends before the log's files go (its
    topic's directory is renamed away only after)."""
    storage, old = topic_with_a_due_checkpoint(tmp_path)
    writing, go_on = threading.Event(), threading.Event()
    real = durability.write_atomically

    def slow_write(path, data):
        writing.set()
        assert go_on.wait(10)
        real(path, data)

    monkeypatch.setattr(durability, "write_atomically", slow_write)
    worker = threading.Thread(target=old.log.checkpoint, kwargs={"sync": False})
    worker.start()
    try:
        assert writing.wait(10)
        deleting = threading.Thread(target=storage.delete_topic, args=("t",))
        deleting.start()
        deleting.join(0.3)
        assert deleting.is_alive() and os.path.isdir(tmp_path / "t")  # the close waits for the checkpoint lock
    finally:
        go_on.set()
        worker.join(10)
    deleting.join(10)
    assert not worker.is_alive() and not deleting.is_alive()
    assert not os.path.exists(tmp_path / "t")
    storage.close()
