"""Every expected error of the command line is one line naming the input and the cause, exit status 2,
no traceback; --debug brings the traceback back. Nothing is recorded for a usage error. The cases run
the command line's entry point in this process (cheap); one runs it in a new process, as a shell does."""

import json
import os
import subprocess
import sys

import pytest

VIDEO = "{fixtures}/video/counter.mp4"


def _gvmgen(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def _truncated(folder):
    """truncated.mp4: a faststart MP4 cut to its first 30%: the container still says 4 s."""
    path, whole = folder / "truncated.mp4", folder / "whole.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=4", "-c:v", "libx264",
                    "-movflags", "+faststart", str(whole)], check=True)
    path.write_bytes(whole.read_bytes()[:whole.stat().st_size * 30 // 100])


def _checkpoint(folder):
    """broken/: the tiny model as save_model writes it, for a case to break."""
    from gvmgen.model.checkpoints import load_model, save_model

    save_model(load_model("tiny"), folder / "broken")
    return folder / "broken"


def _config_not_json(folder):
    (_checkpoint(folder) / "gvmgen_config.json").write_text("{\n")


def _weights_cut_off(folder):
    weights = _checkpoint(folder) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])


def _weights_of_other_shapes(folder):
    config = _checkpoint(folder) / "gvmgen_config.json"
    settings = json.loads(config.read_text())
    settings["lm"]["hidden_size"] //= 2
    config.write_text(json.dumps(settings))


POSTGRES = "postgresql+psycopg://gvmgen:secret-password@127.0.0.1:1/gvmgen"

# name: (arguments, what the line must say[, {"env": variables set for the command, "setup": a function
# that makes the inputs the command needs in its working folder}])
CASES = {
    "generate on cuda without CUDA": (["generate", VIDEO, "-o", "out.mp4", "--device", "cuda"], "CUDA is not available"),
    "weights fetch without network": (["weights", "fetch", "small"], "cannot download openai/clip-vit-large-patch14-336"),
    "eval of a run that does not exist": (["eval", "999"], "no run 999"),
    "eval of a library never scored": (["eval", "library"], "library: neither a run id nor a catalog that has been scored"),
    "runs show of a run that does not exist": (["runs", "show", "999"], "no run 999"),
    "a seed beyond 64 bits": (["score", "library", "--out", "out", "--seed", "9223372036854775808"], "--seed: seed must lie between 0 and 2147483647"),
    "a negative seed to generate": (["generate", VIDEO, "-o", "out.mp4", "--seed", "-5"], "--seed: seed must lie between 0 and"),
    "a batch of no videos": (["score", "library", "--out", "out", "--batch-videos", "0"],
                             "Invalid value for '--batch-videos': Input should be greater than or equal to 1"),
    "a batch too large": (["score", "library", "--out", "out", "--batch-videos", "65"],
                          "Invalid value for '--batch-videos': Input should be less than or equal to 64"),
    "a negative lease": (["score", "library", "--out", "out", "--lease", "-1"],
                         "Invalid value for '--lease': Input should be greater than or equal to 1"),
    "an unknown video status": (["videos", "list", "--status", "bogus"], "'bogus' is not one of"),
    "a library that does not exist": (["score", "nowhere", "--out", "out"], "nowhere: no such folder"),
    "an output that is a file": (["score", "library", "--out", VIDEO], "counter.mp4: exists and is not a folder"),
    "a model that does not exist": (["score", "library", "--out", "out", "--model", "nosuch"], "model 'nosuch'"),
    "a model misspelt": (["generate", VIDEO, "-o", "out.mp4", "--model", "tinny"], "model 'tinny': neither a preset "
                         "(tiny, small, medium), a published model version, nor a checkpoint folder; did you mean tiny?"),
    "a training of no steps": (["finetune", "library", "--name", "studio", "--steps", "0"], "steps must be at least 1, got 0"),
    "an unknown feature transformation": (["finetune", "library", "--name", "studio", "--variant", "bogus"],
                                          "Invalid value for '--variant': 'bogus' is not one of"),
    "a model name that is a path": (["finetune", "library", "--name", "studio/v2"], "model name 'studio/v2': use letters"),
    "an unreachable PostgreSQL": (["runs", "list"], f"GVMGEN_DATABASE_URL: {POSTGRES.replace('secret-password', '***')}: "
                                  "the database is unreachable or refused", {"env": {"GVMGEN_DATABASE_URL": POSTGRES}}),
    "a database URL of no driver": (["runs", "list"], "GVMGEN_DATABASE_URL: foo://gvmgen:***@db/gvmgen is not a "
                                    "database URL gvmgen can use (no driver for 'foo')",
                                    {"env": {"GVMGEN_DATABASE_URL": "foo://gvmgen:secret-password@db/gvmgen"}}),
    "an SQLite database in no folder": (["runs", "list"], "GVMGEN_DATABASE_URL: nowhere/gvmgen.db: its folder does not exist",
                                        {"env": {"GVMGEN_DATABASE_URL": "sqlite:///nowhere/gvmgen.db"}}),
    "an SQLite database in a folder no one may write": (  # /proc refuses new files even to root
        ["runs", "list"], "GVMGEN_DATABASE_URL: /proc/gvmgen.db: its folder is not writable (",
        {"env": {"GVMGEN_DATABASE_URL": "sqlite:////proc/gvmgen.db"}}),
    "a GVMGEN_HOME that cannot be made": (["runs", "list"], "GVMGEN_HOME: /proc/gvmgen: cannot be made (",
                                           {"env": {"GVMGEN_HOME": "/proc/gvmgen"}}),
    "an output folder no one may write": (["score", "library", "--out", "/proc"],
                                          "/proc: the output folder is not writable ("),
    "an output folder that cannot be made": (["score", "library", "--out", "/proc/scored"],
                                             "/proc/scored: the output folder cannot be made: /proc is not writable ("),
    "a checkpoint whose configuration is not JSON": (
        ["generate", VIDEO, "-o", "out.mp4", "--model", "broken"],
        "broken/gvmgen_config.json: not valid JSON (line 2, column 1", {"setup": _config_not_json}),
    "a checkpoint whose weights are cut off": (
        ["generate", VIDEO, "-o", "out.mp4", "--model", "broken"],
        "broken/model.safetensors: not a complete safetensors file (", {"setup": _weights_cut_off}),
    "a checkpoint whose weights do not fit its configuration": (
        ["score", "library", "--out", "out", "--model", "broken"],
        "broken/model.safetensors: the model weights do not fit its configuration (gvmgen_config.json): size mismatch "
        "for ", {"setup": _weights_of_other_shapes}),
    "a loudness target out of range": (["score", "library", "--out", "out", "--loudness", "+10"],
                                       "--loudness: the loudness target must lie between -40 and -5 LUFS, got 10"),
    "too many channels": (["generate", VIDEO, "-o", "out.mp4", "--channels", "6"], "--channels: channels must be 1 or 2, got 6"),
    "two settings out of range": (["generate", VIDEO, "-o", "out.mp4", "--loudness", "10", "--channels", "6"],
                                  "--loudness: the loudness target must lie between -40 and -5 LUFS, got 10"),
    "an S3 URL to inspect": (["inspect", "s3://bucket/clips/a.mp4"], "s3://bucket/clips/a.mp4: not a local file "
                             "(inspect works on local files; `gvmgen score` reads and writes s3:// URLs)"),
    "an S3 URL to generate into": (["generate", VIDEO, "-o", "s3://bucket/a.mp4"], "s3://bucket/a.mp4: not a local file"),
    "an empty video": (["inspect", "empty.mp4"], "empty.mp4: an empty file (0 bytes)", {"setup": lambda folder: (folder / "empty.mp4").touch()}),
    "an output that is the library": (["score", "library", "--out", "library"], "library: is the library itself"),
    "an output that holds the library": (["score", "library", "--out", "."], ": holds the library "),
    "an output in no video container": (["generate", VIDEO, "-o", "out.wav"], "out.wav: not a video container"),
    "a WebM output for H.264 video": (["generate", VIDEO, "-o", "out.webm"], "WebM cannot hold h264 video"),
    "an output that exists": (["generate", VIDEO, "-o", VIDEO.replace("video/counter", "video/fades")],
                              "fades.mp4: exists (--overwrite replaces it)"),
    "a truncated video": (["generate", "truncated.mp4", "-o", "out.mp4"], "truncated.mp4: truncated: 0.2 s of 4.0 s decodable",
                          {"setup": _truncated}),
}


def test_outputs_never_replace_their_inputs(fixtures, tmp_path, run_cli):
    library = tmp_path / "library"
    library.mkdir()
    for name in ("counter.mp4", "fades.mp4"):
        (library / name).write_bytes((fixtures / "video" / name).read_bytes())
    before = {p.name: p.read_bytes() for p in library.iterdir()}
    video = library / "counter.mp4"
    for args in (["generate", video, "-o", video], ["generate", video, "-o", video, "--overwrite"],
                 ["score", library, "--out", library], ["score", video, "--out", library]):
        code, _, err = run_cli(*args, cwd=tmp_path)
        assert code == 2 and ("would replace" in err or "would overwrite" in err), (args, err)
    assert {p.name: p.read_bytes() for p in library.iterdir()} == before  # byte for byte, and nothing added


@pytest.mark.parametrize("case", list(CASES))
def test_an_expected_error_is_one_line_and_exit_2(case, fixtures, tmp_path, run_cli, monkeypatch):
    args, cause, *how = CASES[case]
    how = how[0] if how else {}
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "counter.mp4").write_bytes((fixtures / "video" / "counter.mp4").read_bytes())
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    if "setup" in how:
        how["setup"](tmp_path)
    for name, value in how.get("env", {}).items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(*[a.format(fixtures=fixtures) for a in args], cwd=tmp_path)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and cause in lines[0], err
    assert "Traceback" not in out + err and "secret-password" not in err
    if args[0] == "score":  # a usage error costs nothing: no run row left behind
        assert "running" not in run_cli("runs", "list", "--json", cwd=tmp_path)[1]


def test_an_error_in_a_new_process_is_one_line_too(tmp_path):
    """The same contract end to end, once, as a user's shell sees it."""
    result = _gvmgen("runs", "show", "999", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == "error: no run 999 (gvmgen runs list shows them)"


def test_debug_shows_the_traceback(tmp_path):
    result = _gvmgen("--debug", "runs", "show", "999", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" in result.stderr           # the same exit status as without it
    assert result.stderr.strip().splitlines()[-1] == "error: no run 999 (gvmgen runs list shows them)"


def test_version():
    from importlib.metadata import version

    result = _gvmgen("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gvmgen {version('gvmgen')}"
