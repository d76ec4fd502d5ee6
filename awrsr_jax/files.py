"""Writing files safely: the one atomic-write helper, and the workdir lock.

Every file the project writes goes through :func:`atomic_open`: the bytes go
to a temporary file in the same folder, are flushed and fsynced, get the
usual permissions (the umask's, not ``mkstemp``'s 0600), and replace the
target in one rename; on any error the temporary file is removed and the old
target is left as it was. Readers therefore see the old file or the new one,
never half of one.

:class:`WorkdirLock` keeps two runs out of one workdir; :func:`held`
serialises the read-modify-write of a file that several processes update.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile

import numpy as np


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", *, pending: list | None = None):
    """``open(path, mode)`` whose contents reach ``path`` only if the block
    ends without error (``mode`` is ``"w"`` or ``"wb"``). The file object's
    ``name`` is the temporary file's path (to check what was written before
    it is committed; raise to abort).

    With ``pending``, the rename is left to the caller, who commits several
    files together: ``(temporary, path)`` is appended instead, and the caller
    renames or deletes the temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode {mode!r} is not 'w' or 'wb'")
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    handed_over = False
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
            handed_over = True
    finally:
        if not handed_over and os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path, obj) -> None:
    """``obj`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def write_lines(path, records) -> None:
    """One JSON object per line (JSON lines)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def save_npy(path, array) -> None:
    """``np.save`` without pickle, atomically."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def output_path(folder, name: str) -> str:
    """``folder/name`` for a file a command writes; refuses names that would
    leave ``folder`` and writing through a symlink."""
    if not name or os.path.isabs(name) or name in (".", "..") or "/" in name:
        raise ValueError(f"refusing output name {name!r}: must be a plain file name")
    if "\\" in name or "\0" in name:
        raise ValueError(f"refusing output name {name!r}")
    path = os.path.join(folder, name)
    if os.path.islink(path):
        raise ValueError(f"refusing to write through the symlink {path}")
    return path


@contextlib.contextmanager
def held(path):
    """An exclusive ``flock`` on ``path`` (created if missing) for the block,
    waiting for another process that holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class WorkdirBusy(ValueError):
    """Another live run holds the workdir (:class:`WorkdirLock`)."""


class WorkdirLock:
    """An exclusive ``flock`` on ``<workdir>/.lock`` while a run uses it.

    A second run in the same workdir gets a :class:`WorkdirBusy` (a
    ``ValueError``) naming the workdir and the holder's pid instead of two
    writers racing on the same files. The lock dies with its process, so a
    killed run never leaves it held.
    """

    def __init__(self, workdir):
        self.path = os.path.join(os.fspath(workdir), ".lock")
        self._fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WorkdirBusy(
                    f"{os.path.dirname(self.path)} is in use by another run "
                    f"(pid {holder}); wait for it to end or use another --workdir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
