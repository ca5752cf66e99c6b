"""Crash-safe file replacement (ARCHITECTURE.md, decision 11).

Bytes go to a temporary file beside the target; on commit it is flushed,
fsync'd, optionally verified, renamed over the target with ``os.replace`` and
the directory is fsync'd.  A crash at any point leaves the old file (or no
file) under the final name, never a partial one; the source of a conversion is
never touched, even when source and target are the same path, because the old
file is only unlinked by the rename, after the new one is complete.
"""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Callable

__all__ = ["AtomicFile"]


class AtomicFile:
    """A writable binary file that replaces ``path`` only when :meth:`commit` succeeds.

    Example:
        >>> with AtomicFile("out.dcz") as f:          # doctest: +SKIP
        ...     f.write(b"...")
        ...     f.commit()
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        fd, self.tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        self.file = os.fdopen(fd, "wb")
        self.done = False

    def write(self, data) -> int:
        return self.file.write(data)

    def commit(self, verify: Callable[[str], None] | None = None) -> None:
        """Flush, fsync, run ``verify(tmp_path)``, rename over the target, fsync the directory.

        Raises:
            OSError: writing, syncing or renaming failed; the temporary file is
                removed and the target keeps its old content -- unless only the
                final fsync of the directory failed: then the target already is
                the new file and the error says its durability is unknown.
        """
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if verify is not None:
                verify(self.tmp_path)
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self.done = True
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def abort(self) -> None:
        """Drop the temporary file; the target is untouched."""
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.abort()


#: errors of fsync on a directory that mean "not supported here", not "failed"
_FSYNC_DIR_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


def _fsync_dir(directory: str) -> None:
    """Make the rename durable.  A real failure (EIO, ENOSPC) is raised: the target
    already is the complete new file, but whether it survives a power loss is unknown."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FSYNC_DIR_UNSUPPORTED:
            raise
    finally:
        os.close(fd)
