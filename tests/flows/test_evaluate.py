"""gvmgen eval on a scored run: weight-free metrics per video in SQL and a table artifact; FAD and KL
recorded as not available (no CLAP/AST weights here), with the reason."""

import re
import subprocess

import librosa
import numpy as np
import pytest
from sqlalchemy import select


def _pcm(path, rate=22050):
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(rate), "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, np.float32)


def _ffmpeg_lra(path) -> float:
    err = subprocess.run(["ffmpeg", "-nostats", "-i", str(path), "-af", "ebur128", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    return float(re.findall(r"LRA:\s+(-?[\d.]+) LU", err)[-1])


@pytest.mark.slow
def test_a_scored_run_is_evaluated_into_sql_and_an_artifact(prefect_engine, fixtures, tmp_path):
    from flows.evaluate import evaluate
    from flows.score_catalog import score_catalog
    from storage.db import connect
    from storage.models import Evaluation, Output

    library = tmp_path / "library"
    library.mkdir()
    (library / "cuts.mp4").write_bytes((fixtures / "video" / "testvideo.mp4").read_bytes())
    # 40 s with a cut at 20 s (two windows, so one seam) and an audio track of its own (the FAD reference)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-t", "20", "-i", "testsrc=s=320x240:r=25", "-f", "lavfi",
                    "-t", "20", "-i", "mandelbrot=s=320x240:r=25", "-f", "lavfi", "-t", "40", "-i", "sine=frequency=440",
                    "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-map", "2:a",
                    "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(library / "long.mp4")], check=True)
    run = score_catalog(str(library), str(tmp_path / "scored"), model="tiny")["run"]

    result = evaluate(str(run))
    rows = {r["video"]: r for r in result["rows"]}
    assert set(rows) == {"cuts.mp4", "long.mp4"}
    assert 0 <= rows["cuts.mp4"]["cut_onset_hit_rate"] <= 1 and 0 <= rows["cuts.mp4"]["shuffled_cuts"] <= 1
    # The hit rate, derived here from the scored track (ffmpeg's decode, librosa's onsets) and the fixture's
    # known cuts (frames 30, 180, 394 at 29.97 fps), must be the one the flow recorded.
    onsets = librosa.onset.onset_detect(y=_pcm(tmp_path / "scored" / "cuts.flac"), sr=22050, units="time")
    known = np.array([30, 180, 394]) * 1001 / 30000
    expected = float((np.abs(known[:, None] - onsets[None, :]).min(axis=1) <= 0.25).mean()) if len(onsets) else 0.0
    assert rows["cuts.mp4"]["cut_onset_hit_rate"] == pytest.approx(expected, abs=1e-3)
    assert rows["long.mp4"]["seam_flux_ratio"] > 0 and "seam_flux_ratio" not in rows["cuts.mp4"]  # one window
    assert all(r["loudness_range_lu"] >= 0 for r in rows.values())
    assert result["fad_clap"].startswith("not available") and result["kl_ast"].startswith("not available")
    with connect()() as session:
        rows_first = session.scalars(select(Evaluation)).all()
        by_key = {o.video_uri.rsplit("/", 1)[-1]: o for o in session.scalars(select(Output))}
        hits = {e.output_id: e for e in rows_first if e.metric == "cut_onset_hit_rate"}
    # 40 s in 30-s windows overlapping by 12 s (the prompt): the nominal seam at 24 s moves back to the cut
    # at 20 s, so the windows are 0-26 s and 14-40 s, joined at 20 s.
    assert by_key["long.mp4"].windows == [[pytest.approx(0), pytest.approx(26)], [pytest.approx(14), pytest.approx(40)]]
    assert {k: hits[o.id].details["cuts"] for k, o in by_key.items()} == {"cuts.mp4": 3, "long.mp4": 1}
    # Loudness range as ffmpeg's EBU R128 meter (ebur128 filter) measures the same track
    for key in ("cuts.mp4", "long.mp4"):
        assert rows[key]["loudness_range_lu"] == pytest.approx(_ffmpeg_lra(tmp_path / "scored" / key.replace(".mp4", ".flac")),
                                                               abs=1.0)
        stored = {(e.output_id is not None, e.metric): e for e in rows_first}
    assert {m for per_output, m in stored if per_output} == {"cut_onset_hit_rate", "seam_flux_ratio", "loudness_range_lu"}
    assert stored[(False, "fad_clap")].value is None and "CLAP" in stored[(False, "fad_clap")].details["why"]

    again = evaluate(str(run))                      # re-evaluating replaces, never duplicates
    assert again["rows"] == result["rows"]
    with connect()() as session:
        assert len(session.scalars(select(Evaluation)).all()) == len(rows_first) == 7  # 2 + 3 per video, FAD, KL

    catalog = evaluate(str(library))                # the catalog: the same outputs, its FAD and KL its own
    assert catalog["rows"] == result["rows"] and catalog["model"] == result["model"] == "tiny"
    with connect()() as session:
        whole = session.scalars(select(Evaluation).where(Evaluation.catalog_id.is_not(None))).all()
        assert sorted(e.metric for e in whole) == ["fad_clap", "kl_ast"] and len(session.scalars(select(Evaluation)).all()) == 9

    # A track deleted since: that video is named, with why, and the others are evaluated all the same.
    (tmp_path / "scored" / "long.flac").unlink()
    partial = evaluate(str(library))
    assert [r["video"] for r in partial["rows"]] == ["cuts.mp4"] and partial["rows"][0] == rows["cuts.mp4"]
    assert [(r["video"], "long.flac" in r["cause"]) for r in partial["unreadable"]] == [("long.mp4", True)]
