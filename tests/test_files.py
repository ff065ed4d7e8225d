"""Atomic writes: the final name appears only with the whole file, with the umask's permissions.
Scratch: one folder per process, gone when the process is, however it ended."""

import os
import signal
import subprocess
import sys

import pytest

from gvmgen.files import atomic_path


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_has_the_permissions_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out" / "a.flac") as tmp:
            assert tmp.parent == tmp_path / "out" and tmp.suffix == ".flac" and tmp.name.startswith(".")
            tmp.write_bytes(b"music")
            assert not (tmp_path / "out" / "a.flac").exists()   # not under its name until complete
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "a.flac").read_bytes() == b"music"
    assert (tmp_path / "out" / "a.flac").stat().st_mode & 0o777 == mode
    assert os.listdir(tmp_path / "out") == ["a.flac"]


def test_a_failed_write_leaves_neither_the_file_nor_its_partial(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"before")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.mp4") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == ["a.mp4"] and (tmp_path / "a.mp4").read_bytes() == b"before"


MAKE_SCRATCH = ("import sys, tempfile; from gvmgen.files import scratch; "
                "work = tempfile.mkdtemp(dir=scratch()); open(work + '/in.mp4', 'w').write('x'); "
                "print(scratch(), flush=True); sys.stdin.read()")


def _scratch_of_a_process(tmp_path):
    """A process that makes its scratch folder in tmp_path (TMPDIR), with a file in it, and waits."""
    child = subprocess.Popen([sys.executable, "-c", MAKE_SCRATCH], env={**os.environ, "TMPDIR": str(tmp_path)},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    folder = child.stdout.readline().strip()
    assert folder.startswith(str(tmp_path / "gvmgen-")) and os.path.isdir(folder), folder
    return child, folder


@pytest.mark.parametrize("end", ["exit", "Ctrl-C"])
def test_a_process_removes_its_scratch_when_it_ends(tmp_path, end):
    child, folder = _scratch_of_a_process(tmp_path)
    if end == "Ctrl-C":  # an exception, then the exit (the command line turns SIGTERM and SIGHUP into it too)
        child.send_signal(signal.SIGINT)
    child.communicate("")
    assert not os.path.exists(folder) and os.listdir(tmp_path) == []


def test_the_scratch_of_a_killed_process_is_removed_by_the_next_and_a_live_ones_kept(tmp_path):
    killed, left = _scratch_of_a_process(tmp_path)
    living, kept = _scratch_of_a_process(tmp_path)
    # as a process of another container sharing TMPDIR, whose pid means nothing here (a dead one's)
    elsewhere, theirs = _scratch_of_a_process(tmp_path)
    os.rename(theirs, tmp_path / "gvmgen-4194303-other")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert os.path.isdir(left)                               # nothing could remove it then
    third, own = _scratch_of_a_process(tmp_path)             # the next process removes it
    assert not os.path.exists(left) and os.path.isdir(own)
    assert os.path.isdir(kept) and (tmp_path / "gvmgen-4194303-other" / ".in-use").is_file()  # live: kept
    for child in (living, third, elsewhere):
        child.communicate("")
    assert os.listdir(tmp_path) == ["gvmgen-4194303-other"]  # renamed, so its process could not find it
