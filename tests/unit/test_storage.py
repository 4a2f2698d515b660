"""The one atomic write: complete or absent, never half; write-once and folders
moved into place without overwriting what another writer published."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tasks.infra import storage


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_bytes_replaces_a_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "a.bin"
    storage.write_bytes(str(target), b"one")
    storage.write_bytes(target.as_uri(), b"two")
    assert target.read_bytes() == b"two"
    assert leftovers(target.parent) == []


def test_a_crash_mid_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.bin"
    storage.write_bytes(str(target), b"complete")

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        storage.write_bytes(str(target), b"half")
    assert target.read_bytes() == b"complete"
    assert leftovers(tmp_path) == []


def test_write_new_writes_once_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "frozen.parquet"
    assert storage.write_new(str(target), b"first") is True
    assert storage.write_new(str(target), b"second") is False
    assert target.read_bytes() == b"first"
    assert leftovers(tmp_path) == []


def test_of_concurrent_write_new_calls_exactly_one_wins(tmp_path: Path) -> None:
    target = tmp_path / "frozen.parquet"
    start = threading.Barrier(8)
    won: list[bytes] = []

    def writer(i: int) -> None:
        start.wait()
        if storage.write_new(str(target), f"writer {i}".encode()):
            won.append(f"writer {i}".encode())

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(won) == 1
    assert target.read_bytes() == won[0]
    assert leftovers(tmp_path) == []


def test_a_staged_folder_is_moved_into_place_once(tmp_path: Path) -> None:
    first, second = tmp_path / ".stage-1", tmp_path / ".stage-2"
    for staged, text in ((first, "one"), (second, "two")):
        staged.mkdir()
        (staged / "manifest.json").write_text(text)
    final = tmp_path / "models" / "abc"
    assert storage.move_into_place(first, final) is True
    # Content-addressed: a second copy of the same artifact is dropped.
    assert storage.move_into_place(second, final) is False
    assert (final / "manifest.json").read_text() == "one"
    assert not first.exists() and not second.exists()
