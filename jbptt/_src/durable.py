"""Durable file operations shared by result files and checkpoints.

Every helper here keeps two promises: a kill between any two system calls
leaves either the old or the new state on disk (never a half-written file),
and nothing that already exists is overwritten or deleted except the file
being replaced by its own new version. Writers coordinate through
:func:`locked`, an exclusive ``fcntl.flock`` on a lock file beside the
protected path (``<path>.lock``, created on first use and never removed:
removing a lock file while another process waits on it would split the
lock in two).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile


def fsync_dir(path: str) -> None:
    """Flush the folder holding ``path`` (so a rename or a new name in it is
    on disk); a file system that cannot is left alone."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: str):
    """Hold an exclusive ``flock`` on ``<path>.lock`` for the ``with`` body.

    The lock is advisory: every writer of ``path`` in this package takes it
    (result-file appends, rewrites and quarantines; checkpoint saves,
    prunes and quarantines), so they never interleave, across threads and
    processes alike. It is released when the body ends or the process dies.
    Not re-entrant: do not nest two ``locked`` of one path.
    """
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (short writes are legal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_bytes(path: str, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing) and fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: str, data: bytes) -> str:
    """A new, uniquely named file beside ``path`` holding ``data`` (fsynced)."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.tmp-")
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.chmod(tmp, 0o644)
    return tmp


def replace_atomically(path: str, data: bytes) -> None:
    """Make ``path`` hold ``data``: write a uniquely named temporary file
    beside it, fsync, rename over ``path``, fsync the folder. A kill at any
    moment leaves the old or the new file (and at worst a stray temporary
    file, never a clobbered one: its name is new)."""
    tmp = _temp_beside(path, data)
    os.replace(tmp, path)
    fsync_dir(path)


def create_exclusively(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if no file is there.

    The content is written to a temporary file first and then hard-linked to
    ``path``, which fails if the name exists: the file appears complete or
    not at all, and an existing file is never replaced. Returns whether it
    was created. Where hard links are not supported, ``O_EXCL`` creation is
    used (a kill mid-write can then leave a short file, which a reader sees
    as a torn line).
    """
    tmp = _temp_beside(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network/FUSE file systems)
        return _create_with_excl(path, data)
    finally:
        os.unlink(tmp)
    fsync_dir(path)
    return True


def _create_with_excl(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path)
    return True


def free_name(base: str) -> str:
    """``base`` if nothing is there, else the first free ``base.1``, ``base.2``."""
    candidate, n = base, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{base}.{n}"
    return candidate


def move_aside(path: str, base: str) -> str:
    """Rename ``path`` (a file or a folder) to a free name ``base[.n]``.

    Never overwrites: a file is hard-linked to its new name (which fails if
    that name is taken; the next number is tried) before the old name is
    removed, so a kill in between leaves both names, never neither. A folder
    is renamed to a name checked free (callers hold :func:`locked`). Returns
    the new name.
    """
    if os.path.isdir(path) and not os.path.islink(path):
        target = free_name(base)
        os.rename(path, target)
        fsync_dir(target)
        return target
    while True:
        target = free_name(base)
        try:
            os.link(path, target, follow_symlinks=False)
        except FileExistsError:
            continue  # taken meanwhile by someone not holding our lock
        except OSError:  # no hard links: rename to the name found free
            os.rename(path, target)
            break
        os.unlink(path)
        break
    fsync_dir(target)
    return target


def remove_tree(path: str) -> None:
    """Delete a folder this package wrote (a pruned checkpoint step)."""
    shutil.rmtree(path)
    fsync_dir(path)
