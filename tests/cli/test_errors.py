"""Every expected error of the command line is one line naming the input and the cause, exit status 2,
no traceback; --debug brings the traceback back. Nothing is recorded for a usage error."""

import os
import subprocess
import sys

import pytest

VIDEO = "{fixtures}/video/counter.mp4"


def _gvmgen(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)


CASES = {
    "generate on cuda without CUDA": (["generate", VIDEO, "-o", "out.mp4", "--device", "cuda"], "CUDA is not available"),
    "weights fetch without network": (["weights", "fetch", "small"], "cannot download openai/clip-vit-large-patch14-336"),
    "eval of a run that does not exist": (["eval", "999"], "no run 999"),
    "runs show of a run that does not exist": (["runs", "show", "999"], "no run 999"),
    "a seed beyond 64 bits": (["score", "library", "--out", "out", "--seed", "9223372036854775808"], "seed"),
    "a batch of no videos": (["score", "library", "--out", "out", "--batch-videos", "0"], "batch_videos"),
    "a negative batch": (["score", "library", "--out", "out", "--batch-videos", "-3"], "batch_videos"),
    "a negative lease": (["score", "library", "--out", "out", "--lease", "-1"], "lease_s"),
    "an unknown video status": (["videos", "list", "--status", "bogus"], "'bogus' is not one of"),
    "a library that does not exist": (["score", "nowhere", "--out", "out"], "nowhere: no such folder"),
    "an output that is a file": (["score", "library", "--out", VIDEO], "counter.mp4: exists and is not a folder"),
    "a model that does not exist": (["score", "library", "--out", "out", "--model", "nosuch"], "model 'nosuch'"),
    "an unreachable PostgreSQL": (["runs", "list"], "database is unreachable"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_expected_error_is_one_line_and_exit_2(case, fixtures, tmp_path):
    args, cause = CASES[case]
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "counter.mp4").write_bytes((fixtures / "video" / "counter.mp4").read_bytes())
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    if case == "an unreachable PostgreSQL":
        env["GVMGEN_DATABASE_URL"] = "postgresql+psycopg://gvmgen:secret-password@127.0.0.1:1/gvmgen"
    result = _gvmgen(*[a.format(fixtures=fixtures) for a in args], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and cause in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "secret-password" not in result.stderr
    if args[0] == "score":  # a usage error costs nothing: no run row left behind
        assert "running" not in _gvmgen("runs", "list", "--json", cwd=tmp_path).stdout


def test_debug_shows_the_traceback(tmp_path):
    result = _gvmgen("--debug", "runs", "show", "999", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "no run 999" in result.stderr


def test_version():
    from importlib.metadata import version

    result = _gvmgen("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gvmgen {version('gvmgen')}"
