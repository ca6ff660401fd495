"""State-machine snapshot files (streamlog.storage.snapshot_files): the frame, the checks, the stores."""

from __future__ import annotations

import os

import pytest

from streamlog.storage import snapshot_files
from streamlog.storage.snapshot_files import (
    HEADER_SIZE,
    KEEP,
    DirectorySnapshots,
    MemorySnapshots,
    SnapshotFileError,
    decode,
    encode,
)

PAYLOAD = b'{"a":1,"b":[1,2,3]}'


def test_a_file_decodes_to_what_was_encoded():
    frame = decode(encode(41, 7, PAYLOAD))
    assert (frame.index, frame.term, frame.payload) == (41, 7, PAYLOAD)


def test_an_empty_payload_is_a_file_too():
    assert decode(encode(1, 1, b"")).payload == b""


def test_every_flipped_bit_is_refused():
    data = encode(41, 7, PAYLOAD)
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(SnapshotFileError):
                decode(bytes(damaged))


@pytest.mark.parametrize("cut", [0, 1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_a_torn_file_is_refused(cut):
    with pytest.raises(SnapshotFileError, match="shorter|torn"):
        decode(encode(41, 7, PAYLOAD)[:cut])


def test_trailing_bytes_are_refused():
    with pytest.raises(SnapshotFileError, match="torn or truncated"):
        decode(encode(41, 7, PAYLOAD) + b"x")


def test_another_version_is_refused_by_name():
    data = bytearray(encode(41, 7, PAYLOAD))
    data[8:10] = (2).to_bytes(2, "big")
    with pytest.raises(SnapshotFileError, match="version 2: this release reads version 1"):
        decode(bytes(data))


def test_another_file_is_not_a_snapshot():
    with pytest.raises(SnapshotFileError, match="bad magic"):
        decode(b"x" * 64)


def test_names_are_the_index_in_twenty_digits():
    assert snapshot_files.file_name(42) == "00000000000000000042.snapshot"
    assert snapshot_files.parse_file_name("00000000000000000042.snapshot") == 42
    for other in ("00000000000000000042.snapshot.tmp", "00000000000000000042.snapshot.refused", "42.snapshot",
                  "00000000000000000042.log"):
        assert snapshot_files.parse_file_name(other) is None


@pytest.fixture(params=["directory", "memory"])
def store(request, tmp_path):
    return DirectorySnapshots(str(tmp_path / "g")) if request.param == "directory" else MemorySnapshots()


def test_a_store_keeps_the_newest_two(store):
    assert store.listing() == []
    for index in (3, 9, 14):
        store.save(index, encode(index, 1, PAYLOAD))
    assert KEEP == 2 and store.listing() == [14, 9]
    assert decode(store.read(9)).index == 9


def test_a_refused_file_is_never_listed_again(store):
    store.save(3, encode(3, 1, PAYLOAD))
    store.save(9, b"damaged")
    store.refuse(9)
    assert store.listing() == [3]


def test_a_refused_file_is_kept_beside_as_evidence(tmp_path):
    store = DirectorySnapshots(str(tmp_path))
    store.save(9, b"damaged")
    store.refuse(9)
    assert sorted(os.listdir(tmp_path)) == ["00000000000000000009.snapshot.refused"]


def test_a_save_is_atomic_and_a_leftover_temporary_file_is_not_a_snapshot(tmp_path, monkeypatch):
    store = DirectorySnapshots(str(tmp_path))
    store.save(3, encode(3, 1, PAYLOAD))
    synced: list[str] = []
    real_replace = os.replace

    def crash_at_rename(src, dst):
        synced.append(src)
        raise OSError("power lost")

    monkeypatch.setattr(os, "replace", crash_at_rename)
    with pytest.raises(OSError):
        store.save(9, encode(9, 1, PAYLOAD))
    monkeypatch.setattr(os, "replace", real_replace)
    assert synced == [store.path(9) + ".tmp"]
    assert store.listing() == [3]  # the old file is whole; the .tmp is the storage recovery's to remove
    assert decode(store.read(3)).index == 3


def test_a_failed_fsync_of_a_save_is_a_sync_failure_never_a_plain_os_error(tmp_path, monkeypatch):
    # A failed fdatasync may have dropped the pages: the caller must stop (fail-stop), not retry.
    import errno

    from streamlog.storage.errors import SyncFailed

    store = DirectorySnapshots(str(tmp_path))
    store.save(3, encode(3, 1, PAYLOAD))

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    for name in ("fdatasync", "fsync"):  # the file's fdatasync; the directory's fsync
        with monkeypatch.context() as m:
            m.setattr(os, name, eio)
            with pytest.raises(SyncFailed, match="Input/output error"):
                store.save(9, encode(9, 1, PAYLOAD))
    assert decode(store.read(3)).index == 3


def test_a_failed_write_of_a_save_is_its_os_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    # ENOSPC: nothing was made durable or lost, a later save may try again; the partial file goes.
    import errno

    from streamlog.storage.errors import SyncFailed

    store = DirectorySnapshots(str(tmp_path))
    store.save(3, encode(3, 1, PAYLOAD))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", full)
        with pytest.raises(OSError) as raised:
            store.save(9, encode(9, 1, PAYLOAD))
    assert not isinstance(raised.value, SyncFailed) and raised.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["00000000000000000003.snapshot"]
    store.save(9, encode(9, 1, PAYLOAD))  # the disk has room again
    assert store.listing() == [9, 3]


def test_a_leftover_temporary_snapshot_file_is_removed_when_the_storage_opens(tmp_path):
    # A crash in the middle of a save leaves <index>.snapshot.tmp beside the metadata log's
    # segments: that log's recovery removes it at the next start (the snapshot files are kept).
    from streamlog.storage.base import TopicConfig
    from streamlog.storage.segmented import SegmentedStorage

    storage = SegmentedStorage(str(tmp_path))
    storage.create_topic("__meta", 1, TopicConfig())
    store = storage.snapshot_store("__meta")
    store.save(3, encode(3, 1, PAYLOAD))
    leftover = store.path(9) + ".tmp"
    with open(leftover, "wb") as f:
        f.write(encode(9, 1, PAYLOAD)[:10])
    storage.close()
    storage = SegmentedStorage(str(tmp_path))
    try:
        storage.load()
        assert not os.path.exists(leftover)
        assert storage.snapshot_store("__meta").listing() == [3]
    finally:
        storage.close()
