"""Atomic writes leave readable files behind, never partial ones."""

from __future__ import annotations

import os
import stat

import pytest

from edgetl.fileio import atomic_open, write_json


def test_atomic_write_uses_the_umask_mode(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "manifest.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_write_that_cannot_start_names_the_target_not_the_temporary_file(tmp_path, monkeypatch) -> None:
    import errno
    import tempfile

    def full(**_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".out.json.x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(OSError) as raised:
        write_json(tmp_path / "out.json", {"a": 1})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "out.json")
