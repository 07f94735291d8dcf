"""Every file fieldpaint writes goes through here: atomic, fsynced, and no-clobber unless told.

`write_atomic(path, write, overwrite=False)` calls `write(tmp)` on a hidden sibling of `path`,
fsyncs it, and then puts it in place in one step:

- overwrite=False: `os.link(tmp, path)`, which fails if `path` exists. Two processes writing the
  same path cannot both succeed, and there is no window between a check and the write.
- overwrite=True: `os.replace(tmp, path)`, which swaps the old file for the new one whole.

The folder is fsynced after either, and the temporary is always removed. A crash at any point
leaves either the old file or the new one, never a partial one; `remove_stale_temporaries`
clears what a killed process left behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from fieldpaint.errors import FieldpaintError

TEMP_MARK = ".tmp-"


def temp_sibling(path: Path) -> Path:
    """A unique hidden name in the same folder, so the final link or rename never crosses filesystems."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Fail early, before any work, if `path` cannot be written: it is a folder, it exists (without
    `overwrite`), or the nearest existing folder above it is a file or not writable (missing
    folders below that one are created by the caller)."""
    path = Path(path)
    if path.is_dir():
        raise FieldpaintError(f"{path} is a folder, not a file")
    if path.exists() and not overwrite:
        raise FieldpaintError(f"{path} already exists; pass --overwrite to replace it")
    check_folder_writable(path.parent)
    return path


def check_folder_writable(folder: str | Path) -> None:
    """`folder`, or the nearest existing folder above it, is a folder we may write in."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FieldpaintError(f"{existing} is a file, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FieldpaintError(f"folder {existing} is not writable")
    # access() says yes to root everywhere and knows nothing of filesystems that refuse files
    # (/proc, some network mounts): create and remove a probe, named like our temporaries.
    probe = temp_sibling(existing / "probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as err:
        raise FieldpaintError(f"folder {existing} is not writable: {err.strerror or type(err).__name__}") from None
    probe.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Write a file with `write(tmp)` and put it at `path` atomically; see the module docstring."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        fsync_path(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FieldpaintError(f"{path} already exists; pass --overwrite to replace it") from None
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text), overwrite=overwrite)


def write_bytes_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove temporaries left in `folder` by killed writers (ours: hidden, `.NAME.tmp-PID-...`,
    or the older `NAME.tmp-PID`) whose process is gone; returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if TEMP_MARK not in entry.name or not entry.is_file():
            continue
        pid_text = entry.name.split(TEMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue  # a writer that is still running
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
