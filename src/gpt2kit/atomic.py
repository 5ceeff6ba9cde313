"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Write to a temporary file in the same directory, flush and fsync it, then `os.replace` it over the
target: on POSIX and Windows that rename is atomic, so the target is either the old or the new file.
An OSError on the way (a full disk, a read-only folder) names the target path, never the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed. sync=False skips the
    fsync, for a cache whose reader checks what it reads (a crash may then leave the new file damaged, never half
    the old)."""
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with naming(path):
            yield Path(tmp)
            # mkstemp makes 0600, and a writer may recreate the file (safetensors does): give it a normal mode now
            os.chmod(tmp, 0o666 & ~_umask())
            if sync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError that names no file (a full disk fails `write()` with ENOSPC and no filename), or
    names the temporary file of `path`, as one that names `path`: the user learns where it failed."""
    path = Path(path)
    try:
        yield
    except OSError as e:
        name = None if e.filename is None else Path(os.fsdecode(e.filename))
        if name is None or (name.parent == path.parent and name.name.startswith(_tmp_prefix(path))):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, naming `path`, if a file cannot be written there (a read-only folder, a file in a folder's
    place, a folder in the file's place), rather than at the end of a long run. Leaves nothing behind."""
    path = Path(path)
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]  # created here, removed after
    with naming(path):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
            os.close(fd)
            os.remove(tmp)
        finally:
            for p in missing:  # innermost first: the check leaves no trace
                with contextlib.suppress(OSError):
                    p.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
