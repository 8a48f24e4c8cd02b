"""Atomic writes: a reader sees the old file or the new one, never half of either.

The protocol for a file: write to a temporary name in the SAME directory (a rename is only
atomic within one file system), flush, ``fsync`` the data, ``os.replace`` it over the target,
then ``fsync`` the directory so that the rename itself survives a power cut. On any error the
temporary file is removed and the old file is left untouched. A folder is made complete the same
way: it is filled under ``<folder>.tmp-<pid>`` and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush a directory's entries (new names, renames) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames are journaled anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; nothing more can be done there
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)`` replaces ``path`` only if the block succeeds.

    Args:
        path: the file to create or replace.
        mode: ``"wb"`` (default) or ``"w"`` (UTF-8 text).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    # os.open rather than tempfile.mkstemp: mkstemp's 0o600 would survive the rename, while
    # 0o666 here gives the new file the same umask-derived mode as an ordinary open()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(folder: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_directory(folder) as tmp:`` fill ``tmp``; it becomes ``folder`` on success.

    The previous ``folder`` is kept until the new one is complete on disk: it is renamed to
    ``<folder>.old-<pid>``, the new folder is renamed into place, and only then is the old one
    deleted. (POSIX cannot rename a directory over a non-empty one, hence the two renames; a
    crash between them leaves both complete copies beside the missing ``folder``.)
    """
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():  # left by an earlier crashed run of a process with this pid
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_directory(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_directory(folder.parent)
    if old.exists():
        shutil.rmtree(old)
