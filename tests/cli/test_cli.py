"""`gvmgen generate` end to end, as a user runs it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gvmgen.media.audio import read_track
from gvmgen.media.probe import probe


def _gvmgen(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, **kw)


def test_a_bad_video_exits_2_with_the_file_named(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    result = _gvmgen("generate", bad, "-o", tmp_path / "out.mp4", "--model", "tiny")
    assert result.returncode == 2
    assert "notes.mp4" in result.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_inspect_prints_what_the_pipeline_sees(fixtures):
    result = _gvmgen("inspect", fixtures / "video" / "testvideo.mp4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"duration", "start", "width", "height", "fps", "vfr", "sar", "audio_streams", "shots", "frames"}
    assert [s["start"] for s in report["shots"]] == [0.0, 1.001, 6.006, 13.146]
    assert len(report["frames"]) == 24 and report["frames"][1]["shot"] == 1 and 1.001 <= report["frames"][1]["t"] < 2


def _ebur128(path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of the file's audio, as ffmpeg's own meter reads them."""
    log = subprocess.run(["ffmpeg", "-hide_banner", "-nostats", "-i", str(path), "-map", "0:a:0", "-af",
                          "ebur128=peak=true", "-f", "null", "-"], capture_output=True, text=True, check=True).stderr
    summary = log[log.rindex("Summary:"):]
    return (float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1)),
            float(re.search(r"Peak:\s+(-?[\d.]+) dBFS", summary).group(1)))


@pytest.mark.slow
def test_score_delivers_at_the_loudness_asked_and_rescores_when_a_setting_changes(fixtures, tmp_path):
    import shutil

    import sqlite3

    library, scored = tmp_path / "library", tmp_path / "scored"
    library.mkdir()
    for name in ("counter", "delayed_start"):
        shutil.copy(fixtures / "video" / f"{name}.mp4", library / f"{name}.mp4")
    (library / "broken.mp4").write_text("not a video")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    run = lambda *args: _gvmgen(*args, env=env, preexec_fn=lambda: os.umask(0o022))
    result = run("score", library, "--out", scored, "--loudness", "-23", "--batch-videos", "2", "--json")
    assert result.returncode == 1, result.stderr             # a video failed
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["scored"], summary["failed"]) == (2, 1)
    # the flow run got the options (Prefect's own database keeps each flow run's parameters)
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        (parameters,) = [json.loads(p) for (p,) in db.execute("SELECT parameters FROM flow_run")]
    assert parameters["batch_videos"] == 2 and parameters["settings"]["target_lufs"] == -23
    for name in ("counter", "delayed_start"):
        source, out = library / f"{name}.mp4", scored / f"{name}.mp4"
        assert _video_packets(out) == _video_packets(source)        # the picture untouched, packet for packet
        integrated, peak = _ebur128(out)
        assert abs(integrated + 23) <= 0.5 and peak <= -1.0
        audio = [s for s in _ffprobe(out)["streams"] if s["codec_type"] == "audio"]
        assert [(a["codec_name"], a["sample_rate"], a["channels"]) for a in audio] == [("aac", "48000", 2)]
        video = next(s for s in _ffprobe(source)["streams"] if s["codec_type"] == "video")
        assert abs(float(audio[0]["duration"]) - float(video["duration"])) <= 0.05
    assert {p.name: p.stat().st_mode & 0o777 for p in scored.iterdir()} == {
        f"{n}.{ext}": 0o644 for n in ("counter", "delayed_start") for ext in ("mp4", "flac", "report.png")}
    first = (scored / "counter.mp4").stat().st_mtime_ns

    retry = run("retry-failed", str(summary["run"]))          # the broken file is tried again, the rest skipped
    assert retry.returncode == 1, retry.stderr
    latest = json.loads(run("runs", "list", "--json").stdout)[0]
    assert (latest["scored"], latest["skipped"], latest["failed"]) == (0, 2, 1)
    assert (scored / "counter.mp4").stat().st_mtime_ns == first

    louder = run("score", library, "-o", scored, "--loudness", "-14", "--json")  # another setting: scored again
    assert json.loads(louder.stdout.strip().splitlines()[-1])["scored"] == 2, louder.stderr
    assert abs(_ebur128(scored / "counter.mp4")[0] + 14) <= 0.5


def test_runs_and_videos_are_listed_from_the_database(tmp_path):
    """What `runs list|show` and `videos list --status failed` report, on a database filled as a run would."""
    from datetime import datetime, timezone

    from storage import repository as repo
    from storage.db import connect
    from storage.objects import ObjectInfo

    with connect()() as session:
        cat = repo.catalog(session, "lib", "file:///lib")
        model = repo.model_version(session, "tiny", "preset:tiny")
        now = datetime.now(timezone.utc)
        good, _ = repo.register_video(session, cat, ObjectInfo("good.mp4", 1, None, now), "file:///lib/good.mp4", "sha256:1")
        bad, _ = repo.register_video(session, cat, ObjectInfo("bad.mp4", 1, None, now), "file:///lib/bad.mp4", "sha256:2")
        repo.register_video(session, cat, ObjectInfo("copy.mp4", 1, None, now), "file:///lib/copy.mp4", "sha256:2")
        settings = {"generation": {"seed": 7, "stitch": "continue"}, "target_lufs": -23.0}
        run = repo.start_run(session, cat, model, settings, {"source": "/lib", "output": "/out", "model": "tiny",
                                                             "settings": settings})
        for video, status in ((good, "done"), (bad, "failed")):
            job = repo.claim(session, video, model, repo.settings_hash(settings), owner="w")
            repo.release(session, job, "w", status)
        repo.record_error(session, bad, run, "score", "MediaError: bad.mp4: not a readable media file")
        repo.finish_run(session, run, "completed", scored=1, skipped=3, failed=1, copied=2)

    listed = json.loads(_gvmgen("runs", "list", "--json").stdout)
    assert [(r["id"], r["scored"], r["skipped"], r["copied"], r["failed"]) for r in listed] == [(run.id, 1, 1, 2, 1)]
    shown = json.loads(_gvmgen("runs", "show", str(run.id), "--json").stdout)
    assert shown["failures"] == [   # the copy too, which failed with bad.mp4 (it shares its job)
        {"video": "bad.mp4", "stage": "score", "cause": "MediaError: bad.mp4: not a readable media file"},
        {"video": "copy.mp4", "stage": "score",
         "cause": "the same content as another file, which failed: MediaError: bad.mp4: not a readable media file"}]
    failed = json.loads(_gvmgen("videos", "list", "--status", "failed", "--json").stdout)
    assert [(v["key"], v["cause"]) for v in failed] == [   # the copy's cause names bad.mp4: it says why
        ("bad.mp4", "MediaError: bad.mp4: not a readable media file"),
        ("copy.mp4", "the same content as another file, which failed: MediaError: bad.mp4: not a readable media file")]
    assert _gvmgen("runs", "show", "999").returncode == 2
    # and as people read them: the settings that differ from the defaults, no Python reprs, no "None"
    text = _gvmgen("runs", "show", str(run.id)).stdout
    assert "  settings  generation.seed=7, target_lufs=-23.0\n" in text and "  source    /lib\n" in text, text
    assert "  videos    1 scored, 1 skipped (done before), 2 copied (the same content, scored before), 1 failed, " \
           "0 failed earlier\n" in text, text
    assert "  bad.mp4 (score): MediaError: bad.mp4: not a readable media file" in text and "{" not in text
    (header, _, row) = _gvmgen("runs", "list").stdout.strip().splitlines()
    assert header.split() == ["id", "status", "started", "scored", "skipped", "copied", "failed", "failed", "earlier",
                              "model", "source", "output", "cause"]
    assert row.split()[:2] == [str(run.id), "completed"] and row.split()[4:] == ["1", "1", "2", "1", "0", "tiny", "/lib", "/out"]

    with connect()() as session:   # a fine-tuning's catalog beside it, and a model published again since the run
        clips = repo.catalog(session, "clips", "file:///clips")
        repo.register_video(session, clips, ObjectInfo("music.mp4", 1, None, now), "file:///clips/music.mp4", "sha256:3")
        session.get(type(model), model.id).name = "tiny@20260101T000000"
        session.commit()
    everything = json.loads(_gvmgen("videos", "list", "--json").stdout)
    assert sorted((v["catalog"], v["key"]) for v in everything) == [("clips", "music.mp4"), ("lib", "bad.mp4"),
                                                                    ("lib", "copy.mp4"), ("lib", "good.mp4")]
    assert [v["key"] for v in json.loads(_gvmgen("videos", "list", "--catalog", "file:///lib", "--json").stdout)] == \
        ["good.mp4", "bad.mp4", "copy.mp4"]
    assert json.loads(_gvmgen("runs", "list", "--json").stdout)[0]["model"] == "tiny@20260101T000000"
    models = json.loads(_gvmgen("models", "list", "--json").stdout)
    assert [(m["name"], m["kind"]) for m in models] == [("tiny@20260101T000000", "preset")]

    with connect()() as session:   # the next night: the failed content is not retried
        again = repo.start_run(session, cat, model, settings, {"source": "/lib", "output": "/out", "settings": settings})
        repo.finish_run(session, again, "failed", scored=0, skipped=1, failed=0, failed_earlier=2)
    shown = json.loads(_gvmgen("runs", "show", str(again.id), "--json").stdout)
    cause = "MediaError: bad.mp4: not a readable media file"
    assert shown["failures"] == [] and [(f["video"], f["cause"]) for f in shown["failed_earlier_videos"]] == [
        ("bad.mp4", cause), ("copy.mp4", f"the same content as another file, which failed: {cause}")]
    text = _gvmgen("runs", "show", str(again.id)).stdout
    assert "failed earlier, not retried (--retry-failed takes them again):\n  bad.mp4 (score): " in text, text
    assert json.loads(_gvmgen("runs", "show", str(run.id), "--json").stdout)["failed_earlier_videos"] == []

    with connect()() as session:   # retried, and failed again; its copy gone from the library meanwhile
        retried = repo.start_run(session, cat, model, settings, {"source": "/lib", "output": "/out", "settings": settings})
        job = repo.claim(session, bad, model, repo.settings_hash(settings), owner="w", retry_failed=True)
        repo.release(session, job, "w", "failed")
        repo.record_error(session, bad, retried, "prepare", "MediaError: bad.mp4: still not a media file")
        repo.mark_removed(session, [repo.video_by_key(session, cat.id, "copy.mp4")], set())
        # one counted as failed earlier (another video's, say): bad.mp4 must still not be listed as such
        repo.finish_run(session, retried, "failed", scored=0, skipped=1, failed=1, failed_earlier=1)
    shown = json.loads(_gvmgen("runs", "show", str(retried.id), "--json").stdout)
    assert [(f["video"], f["cause"]) for f in shown["failures"]] == [("bad.mp4", "MediaError: bad.mp4: still not a media file")]
    assert shown["failed_earlier_videos"] == []   # not bad.mp4 again, which failed in this run, nor its removed copy


@pytest.mark.slow
def test_score_can_run_its_media_work_on_a_dask_cluster(fixtures, tmp_path):
    import shutil

    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(fixtures / "video" / "counter.mp4", library / "counter.mp4")
    env = {**__import__("os").environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    result = _gvmgen("score", library, "--out", tmp_path / "scored", "--dask", "local", "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["scored"] == 1
    log = (Path(os.environ["GVMGEN_HOME"]) / "logs" / "prefect.log").read_text()
    assert "distributed.scheduler" in log and "distributed" not in result.stderr   # a real Dask scheduler ran
    # the tasks, and its logs, like Prefect's, went to the log file rather than into the terminal
    assert sorted(p.name for p in (tmp_path / "scored").iterdir()) == ["counter.flac", "counter.mp4", "counter.report.png"]
    # the lease was taken, and the output recorded, by the Dask worker process that did the media work
    from sqlalchemy import select

    from storage.db import connect
    from storage.models import Output, Run

    with connect()() as session:
        (output,) = session.scalars(select(Output)).all()
        run = session.get(Run, output.run_id)
    host, pid = output.worker.rsplit(":", 1)
    assert run.worker != output.worker and int(pid) != int(run.worker.rsplit(":", 1)[1])


def _tone_db(path, stream, freq):
    """The level (dB) of one tone in an audio stream, as ffmpeg decodes it: seconds 0.5-2.5, mono, 8 kHz."""
    import numpy as np

    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", stream, "-ac", "1", "-ar", "8000",
                          "-f", "f32le", "-"], capture_output=True, check=True).stdout
    x = np.frombuffer(pcm, np.float32)[4000:20000]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return 20 * np.log10(spectrum[np.abs(np.fft.rfftfreq(len(x), 1 / 8000) - freq) < 5].max())


def _ffprobe(path) -> dict:
    return json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                                     capture_output=True, text=True, check=True).stdout)


def _video_packets(path):
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-c", "copy", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True).stdout
    return [line.rsplit(",", 1)[-1] for line in out.splitlines() if not line.startswith("#")]


@pytest.mark.slow
def test_generate_mixes_the_music_over_the_original_ducked_by_duck_db(gvmgen, tmp_path):
    source = tmp_path / "-x.mp4"  # a name ffmpeg would take for an option, given as ./-x.mp4
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=160x90:r=25:d=3", "-f", "lavfi", "-i",
                    "sine=frequency=300:d=3", "-f", "lavfi", "-i", "sine=frequency=600:d=3", "-map", "0:v", "-map", "1:a",
                    "-map", "2:a", "-c:v", "libx264", "-c:a", "aac", str(source)], check=True)
    result = gvmgen("generate", "./-x.mp4", "-o", "./-out.mp4", "--model", "tiny", "--mux", "mix", "--duck-db", "6",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote -out.mp4, -out.flac and -out.report.png")  # what a terminal shows
    out = tmp_path / "-out.mp4"
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True)
    assert decode.returncode == 0 and decode.stderr == ""
    probed = _ffprobe(out)
    assert [(s["codec_type"], s["codec_name"]) for s in probed["streams"]] == [("video", "h264"), ("audio", "aac"), ("audio", "aac")]
    assert _video_packets(out) == _video_packets(source)
    # the first track under the music, lowered by 6 dB (not the default 12); the second kept as it was
    assert _tone_db(out, "0:a:0", 300) - _tone_db(source, "0:a:0", 300) == pytest.approx(-6, abs=1)
    assert _tone_db(out, "0:a:1", 600) - _tone_db(source, "0:a:1", 600) == pytest.approx(0, abs=1)
    assert abs(float(probed["streams"][1]["duration"]) - float(_ffprobe(source)["streams"][0]["duration"])) <= 0.05
    # the track beside it: the music alone, at -14 LUFS (ffmpeg's meter), 48 kHz stereo, as long as the picture
    track, rate = read_track(tmp_path / "-out.flac")
    assert rate == 48000 and track.shape[1] == 2 and abs(len(track) / rate - probe(source).duration) <= 0.02
    assert _ebur128(tmp_path / "-out.flac")[0] == pytest.approx(-14, abs=0.5)

@pytest.mark.slow
def test_a_run_given_relative_folders_is_retried_from_another_folder(fixtures, tmp_path):
    """Runs record the library and the output as absolute paths, so `retry-failed` (or `evaluate lib`)
    from another folder finds the same files, where it once looked for `lib` in the folder it ran in."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "lib").mkdir(parents=True)
    elsewhere.mkdir()
    (work / "lib" / "counter.mp4").write_bytes((fixtures / "video" / "counter.mp4").read_bytes())
    (work / "lib" / "notes.mp4").write_text("not a video")
    first = _gvmgen("score", "lib", "--out", "out", "--json", cwd=work)
    assert first.returncode == 1, first.stderr[-2000:]
    run = json.loads(first.stdout.strip().splitlines()[-1])["run"]
    shown = json.loads(_gvmgen("runs", "show", run, "--json", cwd=elsewhere).stdout)
    assert (shown["parameters"]["source"], shown["parameters"]["output"]) == (str(work / "lib"), str(work / "out"))

    again = _gvmgen("retry-failed", run, cwd=elsewhere)    # takes notes.mp4 again: still not a video
    assert again.returncode == 1 and "notes.mp4" in again.stdout + again.stderr, again.stderr[-2000:]
    assert list(elsewhere.iterdir()) == [] and (work / "out" / "counter.mp4").is_file()
    retried = json.loads(_gvmgen("runs", "list", "--json", cwd=elsewhere).stdout)[0]
    assert (retried["source"], retried["skipped"], retried["failed"]) == (str(work / "lib"), 1, 1)

    (work / "empty").mkdir()                              # a wrong folder or prefix: said, not passed over
    empty = _gvmgen("score", "empty", "--out", "out", cwd=work)
    assert empty.returncode == 0 and f"warning: {work / 'empty'}: no videos there" in empty.stderr, empty.stderr[-2000:]


def test_the_command_lines_settings_options_are_the_settings_own():
    """Each option's default and choices are ScoreSettings' (written out in the CLI so that it starts
    without torch): a default changed in one place only would score with another than the one shown."""
    from enum import Enum

    import cli
    from gvmgen.settings import STITCH_MODES
    from gvmgen.media.frames import DETECTORS
    from gvmgen.media.mux import MUX_MODES
    from gvmgen.model.config import FEATURE_TRANSFORMATIONS
    from gvmgen.settings import TRACK_FORMATS, ScoreSettings

    defaults = ScoreSettings().to_dict()
    for name, kind, option, where in cli.SETTINGS_OPTIONS:
        node = defaults
        for part in where.split("."):
            node = node[part]
        default = option.default.value if isinstance(option.default, Enum) else option.default
        assert default == node, name
    assert [[m.value for m in enum] for enum in (cli.Stitch, cli.Detector, cli.MuxMode, cli.TrackFormat, cli.Variant)] == [
        list(STITCH_MODES), list(DETECTORS), list(MUX_MODES), list(TRACK_FORMATS), list(FEATURE_TRANSFORMATIONS)]
