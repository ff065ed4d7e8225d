"""gvmgen eval on a scored run: weight-free metrics per video in SQL and a table artifact; FAD and KL
recorded as not available (no CLAP/AST weights here), with the reason."""

import json
import subprocess
import sys

import pytest
from sqlalchemy import select


@pytest.mark.slow
def test_a_scored_run_is_evaluated_into_sql_and_an_artifact(prefect_engine, fixtures, tmp_path):
    from flows.evaluate import evaluate
    from flows.score_catalog import score_catalog
    from storage.db import connect
    from storage.models import Evaluation

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
    assert rows["long.mp4"]["seam_flux_ratio"] > 0 and "seam_flux_ratio" not in rows["cuts.mp4"]  # one window
    assert all(r["loudness_range_lu"] >= 0 for r in rows.values())
    assert result["fad_clap"].startswith("not available") and result["kl_ast"].startswith("not available")
    with connect()() as session:
        rows_first = session.scalars(select(Evaluation)).all()
        stored = {(e.output_id is not None, e.metric): e for e in rows_first}
    assert {m for per_output, m in stored if per_output} == {"cut_onset_hit_rate", "seam_flux_ratio", "loudness_range_lu"}
    assert stored[(False, "fad_clap")].value is None and "CLAP" in stored[(False, "fad_clap")].details["why"]

    again = evaluate(str(run))                      # re-evaluating replaces, never duplicates
    assert again["rows"] == result["rows"]
    with connect()() as session:
        assert len(session.scalars(select(Evaluation)).all()) == len(rows_first) == 7  # 2 + 3 per video, FAD, KL
