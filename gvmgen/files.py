"""How gvmgen writes files.

- A result: under a temporary name beside it, then renamed, so that a reader never sees a partial file
  under the final name, with the permissions the user's umask gives any new file (0644 under the usual
  022; a temporary file is otherwise created 0600).
- Scratch work (downloads, frames, tracks before upload): in one folder per process in the system's
  temporary folder, removed when the process exits, however it is stopped; a process that could not
  remove its own (SIGKILL, power lost) has it removed by the next one on the same machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

_SCRATCH = {}  # pid -> this process's scratch folder (a forked child makes its own)


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
    """This process's scratch folder, `gvmgen-<host>-<pid>-*` in the system's temporary folder (TMPDIR):
    made on first use, removed at exit. Make work folders inside it (tempfile's dir=scratch())."""
    pid = os.getpid()
    if pid not in _SCRATCH:
        host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40]
        _remove_the_dead_ones(host)
        _SCRATCH[pid] = Path(tempfile.mkdtemp(prefix=f"gvmgen-{host}-{pid}-"))
        atexit.register(shutil.rmtree, _SCRATCH[pid], ignore_errors=True)
    return _SCRATCH[pid]


def _remove_the_dead_ones(host: str) -> None:
    """The scratch folders of this machine's processes that are gone. (A pid in use again keeps its
    folder until that process ends: a folder is never taken from a live process.)"""
    for folder in Path(tempfile.gettempdir()).glob(f"gvmgen-{host}-*-*"):
        pid = folder.name[len(f"gvmgen-{host}-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
