"""fieldpaint.atomic: no-clobber links, whole replacement, crash safety, stale-temporary cleanup."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fieldpaint.atomic as atomic
from fieldpaint.atomic import (TEMP_MARK, check_writable, remove_stale_temporaries, write_atomic,
                               write_bytes_atomic, write_text_atomic)
from fieldpaint.errors import FieldpaintError


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name]


def test_no_clobber_refuses_an_existing_file(tmp_path):
    out = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(FieldpaintError, match="already exists"):
        write_text_atomic(out, "new")
    assert out.read_text() == "old" and temporaries(tmp_path) == []


def test_no_clobber_holds_when_the_file_appears_after_the_check(tmp_path):
    """The link itself refuses: a writer that passed check_writable still cannot clobber."""
    out = tmp_path / "a.txt"
    check_writable(out)

    def write(tmp):
        tmp.write_text("mine")
        out.write_text("theirs")  # another writer, between our check and our link

    with pytest.raises(FieldpaintError, match="already exists"):
        write_atomic(out, write)
    assert out.read_text() == "theirs" and temporaries(tmp_path) == []


def test_overwrite_replaces_the_whole_file(tmp_path):
    out = write_bytes_atomic(tmp_path / "a.bin", b"x" * 1000)
    inode = out.stat().st_ino
    write_bytes_atomic(out, b"short", overwrite=True)
    assert out.read_bytes() == b"short" and temporaries(tmp_path) == []
    assert out.stat().st_ino != inode  # a new file swapped in, not the old one truncated in place


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_crash_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, where, overwrite):
    out = write_text_atomic(tmp_path / "a.txt", "old")
    if not overwrite:
        out = tmp_path / "b.txt"  # no-clobber to a fresh name: a crash leaves nothing

    def crash(*_):
        raise OSError(28, "No space left on device (simulated)")

    if where == "fsync":
        monkeypatch.setattr(atomic, "fsync_path", crash)
        write = lambda tmp: tmp.write_text("new")  # noqa: E731
    else:
        def write(tmp):
            tmp.write_text("ne")  # half of it, then the disk fills
            crash()
    with pytest.raises(OSError):
        write_atomic(out, write, overwrite=overwrite)
    assert (tmp_path / "a.txt").read_text() == "old"
    assert not (tmp_path / "b.txt").exists()
    assert temporaries(tmp_path) == []


def test_check_writable_refuses_folders_existing_files_and_files_as_folders(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(FieldpaintError, match="is a folder"):
        check_writable(tmp_path, overwrite=True)
    with pytest.raises(FieldpaintError, match="already exists"):
        check_writable(tmp_path / "f")
    assert check_writable(tmp_path / "f", overwrite=True) == tmp_path / "f"
    with pytest.raises(FieldpaintError, match="is a file"):
        check_writable(tmp_path / "f" / "deeper" / "x.nc")
    with pytest.raises(FieldpaintError, match="not writable"):
        check_writable("/proc/fieldpaint-test/x.nc")  # refuses even root
    assert check_writable(tmp_path / "new" / "x.nc") == tmp_path / "new" / "x.nc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # the probe is gone, nothing created


def test_remove_stale_temporaries_keeps_a_live_writers_file(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # a process that has exited (its pid is not reused this soon)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".a.nc{TEMP_MARK}{dead_pid}-0123abcd"
        old_style = tmp_path / f"b.nc{TEMP_MARK}{dead_pid}"
        busy = tmp_path / f".c.nc{TEMP_MARK}{live.pid}-0123abcd"
        kept = tmp_path / "d.nc"
        for path in (stale, old_style, busy, kept):
            path.write_text("x")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([stale, old_style])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([busy.name, kept.name])
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(tmp_path) == [busy]  # its writer is gone now
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_remove_stale_temporaries_removes_our_own_leftovers(tmp_path):
    """A temporary named with this process's pid can only be a leftover: we are not writing it now."""
    mine = tmp_path / f".a.nc{TEMP_MARK}{os.getpid()}-0123abcd"
    mine.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [mine]
