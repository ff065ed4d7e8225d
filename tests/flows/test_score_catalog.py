"""score_catalog on a real Prefect engine, the tiny model and the shared fixtures plus two bad files."""

import shutil

import pytest

pytest.importorskip("prefect")


@pytest.fixture(scope="module")
def prefect_engine(tmp_path_factory):
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.mark.slow
def test_good_videos_get_outputs_bad_ones_a_cause_and_a_rerun_scores_nothing(prefect_engine, fixtures, tmp_path):
    from sqlalchemy import select

    from flows.score_catalog import score_catalog
    from storage.db import connect
    from storage.models import Output, VideoError

    library = tmp_path / "library"
    (library / "nested").mkdir(parents=True)
    shutil.copy(fixtures / "video" / "counter.mp4", library / "counter.mp4")
    shutil.copy(fixtures / "video" / "delayed_start.mp4", library / "nested" / "delayed.mp4")
    data = (fixtures / "video" / "testvideo.mp4").read_bytes()
    (library / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (library / "notes.mp4").write_text("this is not a video")
    out = tmp_path / "scored"

    first = score_catalog(str(library), str(out), model="tiny")
    assert (first["scored"], first["failed"], first["skipped"]) == (2, 2, 0)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "counter.mp4", "counter.wav", "nested/delayed.mp4", "nested/delayed.wav"]
    with connect()() as session:
        assert len(session.scalars(select(Output)).all()) == 2
        causes = {e.cause for e in session.scalars(select(VideoError))}
    assert any("truncated.mp4" in c for c in causes) and any("notes.mp4" in c for c in causes)

    second = score_catalog(str(library), str(out), model="tiny")
    assert (second["scored"], second["failed"], second["skipped"]) == (0, 0, 4)
