"""Atomic writes: the final name appears only with the whole file, with the umask's permissions."""

import os

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
