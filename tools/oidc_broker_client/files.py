"""Files that hold secrets: owner-only directories, and whole-file writes that no reader sees half done."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import ClientError


def _uid() -> int | None:
    getuid = getattr(os, "getuid", None)  # POSIX only; elsewhere the home directory's ACLs protect it
    return getuid() if getuid else None


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter: created 0700, or tightened to 0700. A symlink or
    another user's directory is refused: someone else could read, or plant, what is written there."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ClientError(f"{path} is not a directory (a symlink?): secrets are not written through it",
                          "remove it, or point the setting at a directory of your own")
    uid = _uid()
    if uid is not None and info.st_uid != uid:
        raise ClientError(f"{path} belongs to another user: secrets are not written there",
                          "point the setting at a directory of your own")
    if uid is not None and info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def is_private_file(path: Path) -> bool:
    """A regular file of ours that nobody else may read or write (what a cache entry must be to be used)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    uid = _uid()
    return stat.S_ISREG(info.st_mode) and (uid is None or (info.st_uid == uid and not info.st_mode & 0o077))


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600, atomically: a temporary file beside it, then a rename."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
