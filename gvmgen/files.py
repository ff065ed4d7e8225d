"""The one way gvmgen writes a file: under a temporary name beside it, then renamed, so that a reader
never sees a partial file under the final name, with the permissions the user's umask gives any new
file (0644 under the usual 022; a temporary file is otherwise created 0600)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
