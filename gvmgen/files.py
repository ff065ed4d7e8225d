"""How gvmgen writes files.

- A result: under a temporary name beside it, then renamed, so that a reader never sees a partial file
  under the final name, with the permissions the user's umask gives any new file (0644 under the usual
  022; a temporary file is otherwise created 0600).
- Scratch work (downloads, frames, tracks before upload): in one folder per process in the system's
  temporary folder, removed when the process exits; one whose process could not remove it (SIGKILL,
  power lost) is removed by the next gvmgen process.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

IN_USE = ".in-use"  # the lock file of a scratch folder
_SCRATCH: dict[int, tuple[Path, int]] = {}  # pid -> (its scratch folder, the locked descriptor); a fork makes its own


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside `target` (same suffix, so tools guess the format from it); when the
    block succeeds it becomes `target`, when it raises it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem[:100]}.", suffix=f".partial{target.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def scratch() -> Path:
    """This process's scratch folder, `gvmgen-<pid>-*` in the system's temporary folder (TMPDIR), made
    on first use and removed at exit. Make work folders inside it (tempfile's dir=scratch()).

    The process holds a lock on the folder's IN_USE file while it lives, and the kernel drops the lock
    however the process ends; a new process removes every folder whose lock it can take. A lock, not
    the pid in the name: containers sharing a TMPDIR reuse each other's pids."""
    pid = os.getpid()
    if pid not in _SCRATCH:
        _remove_abandoned()
        starting = Path(tempfile.mkdtemp(prefix=".gvmgen-starting-"))
        lock = os.open(starting / IN_USE, os.O_CREAT | os.O_RDWR, 0o600)  # not inherited by ffmpeg & co
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = starting.with_name(f"gvmgen-{pid}-{starting.name.rsplit('-', 1)[1]}")
        starting.rename(folder)  # a folder gets the name the sweep looks for only once it is locked
        _SCRATCH[pid] = folder, lock
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return _SCRATCH[pid][0]


def _remove_abandoned() -> None:
    for folder in Path(tempfile.gettempdir()).glob("gvmgen-*"):
        try:
            lock = os.open(folder / IN_USE, os.O_RDWR)
        except OSError:  # not a scratch folder
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)
        except BlockingIOError:  # its process lives
            pass
        finally:
            os.close(lock)
