"""Score every video of a library: list -> register -> for each video not done: lease -> download ->
score (shots, frames, music, loudness, mux) -> upload -> record -> release.

A video that fails is recorded with its cause and the run goes on; the flow fails only when the
infrastructure does (storage or database unreachable after retries). A rerun skips what is done.
"""

from __future__ import annotations

import functools
import os
import time
import socket
import tempfile
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from gvmgen.generate import GenerationSettings, MusicGenerator
from gvmgen.model.checkpoints import load_model
from gvmgen.pipeline import ScoreSettings, compose, finish, prepare
from storage import repository as repo
from storage.db import connect
from storage.objects import ObjectInfo, open_store

WORKER = f"{socket.gethostname()}:{os.getpid()}"


@functools.lru_cache(maxsize=2)
def cached_model(name: str):
    """Loaded once per worker process, not once per video."""
    return load_model(name)


@task(retries=3, retry_delay_seconds=[2, 10, 30])
def list_library(source: str) -> list[ObjectInfo]:
    return list(open_store(source).list())


@task(retries=3, retry_delay_seconds=[2, 10, 30])
def register_videos(source: str, catalog_name: str, objects: list[ObjectInfo]) -> list[int]:
    store, sessions = open_store(source), connect()
    with sessions() as session:
        cat = repo.catalog(session, catalog_name, source)
        ids = []
        for obj in objects:
            digest = obj.etag and f"etag:{obj.etag}" or store.content_hash(obj.key)
            video, _ = repo.register_video(session, cat, obj, store.uri(obj.key), digest)
            ids.append(video.id)
        return ids


@task
def score_one(video_id: int, source: str, output: str, model_name: str, settings: dict, run_id: int,
              retry_failed: bool, lease_s: float) -> dict:
    """One row of the run's table; its status is 'scored', 'skipped' (done, failed before, or leased
    elsewhere) or 'failed'."""
    from storage.models import ModelVersion, Run, Video

    sessions = connect()
    started = time.perf_counter()
    with sessions() as session:
        video, run = session.get(Video, video_id), session.get(Run, run_id)
        model_row = session.get(ModelVersion, run.model_version_id)
        row = {"video": video.key, "duration": None, "shots": None, "windows": None, "loudness_lufs": None,
               "seconds": None, "status": "skipped"}
        key = repo.settings_hash(settings)
        job = repo.claim(session, video, model_row, key, owner=WORKER, lease_s=lease_s, retry_failed=retry_failed)
        if job is None:
            return row
        stage = "download"
        try:
            with tempfile.TemporaryDirectory(prefix="gvmgen-") as work:
                local = open_store(source).download(video.key, Path(work) / "in")
                stage = "score"
                model = cached_model(model_name)
                score = ScoreSettings(generation=GenerationSettings(**settings))
                prepared = prepare(model, local, score)
                (track,) = compose(model, [prepared], score)
                out_name = PurePosixPath(video.key)
                done = finish(prepared, track, model.config.sample_rate, Path(work) / "out" / out_name.name, score)
                repo.record_probe(session, video, duration=prepared.analysis.info.duration,
                                  width=prepared.analysis.info.width, height=prepared.analysis.info.height,
                                  fps=prepared.analysis.fps, rotation=prepared.analysis.info.rotation,
                                  audio_streams=prepared.analysis.info.audio_streams, shots=prepared.analysis.shots)
                stage = "upload"
                out_store = open_store(output)
                track_key = str(out_name.with_suffix(".wav"))
                track_uri = out_store.upload(done.track, track_key)
                video_uri = out_store.upload(done.video, str(out_name))
            repo.record_output(session, video, model_row, run, settings, video_uri=video_uri, track_uri=track_uri,
                               loudness_lufs=done.loudness.output_lufs, true_peak_dbtp=done.loudness.true_peak_dbtp,
                               seed=settings.get("seed"))
            repo.release(session, job, WORKER, "done")
            info = prepared.analysis.info
            windows = len(MusicGenerator(model, score.generation).plan(prepared.tokens))
            row.update(duration=round(info.duration, 2), shots=len(prepared.analysis.shots), windows=windows,
                       loudness_lufs=round(done.loudness.output_lufs, 1), status="scored")
        except Exception as e:  # one bad video never stops the catalog
            repo.record_error(session, video, run, stage, f"{type(e).__name__}: {e}")
            repo.release(session, job, WORKER, "failed")
            row["status"] = "failed"
        row["seconds"] = round(time.perf_counter() - started, 1)
        return row


@flow(name="score-catalog")
def score_catalog(source: str, output: str, model: str = "tiny", stitch: str = "continue", seed: int | None = 0,
                  catalog_name: str | None = None, retry_failed: bool = False, lease_s: float = 900) -> dict:
    """`lease_s`: how long a worker's claim on a video lasts; a crashed worker's videos are taken
    again once it runs out."""
    settings = asdict(GenerationSettings(stitch=stitch, seed=seed))
    catalog_name = catalog_name or source
    objects = list_library(source)
    video_ids = register_videos(source, catalog_name, objects)
    sessions = connect()
    with sessions() as session:
        cat = repo.catalog(session, catalog_name, source)
        model_row = repo.model_version(session, model, checkpoint_uri=f"preset:{model}" if "/" not in model else model)
        run = repo.start_run(session, cat, model_row, settings, {"source": source, "output": output, "model": model,
                                                                 "stitch": stitch, "seed": seed},
                             flow_run_id=str(flow_run.get_id() or ""))
    progress = create_progress_artifact(0.0, key="score-catalog-progress", description="videos handled")
    counts = {"scored": 0, "skipped": 0, "failed": 0}
    rows = []
    for i, video_id in enumerate(video_ids, 1):
        rows.append(score_one(video_id, source, output, model, settings, run.id, retry_failed, lease_s))
        counts[rows[-1]["status"]] += 1
        update_progress_artifact(progress, 100.0 * i / max(1, len(video_ids)))
    with sessions() as session:
        from storage.models import Run

        run = session.get(Run, run.id)
        repo.finish_run(session, run, "completed", **counts)
        failures = repo.errors(session, run)
    create_table_artifact(rows, key="score-catalog-results", description=f"run {run.id}: {counts}")
    if failures:
        create_markdown_artifact("## Failed videos\n\n" + "\n".join(
            f"- `{video.key}` ({error.stage}): {error.cause}" for error, video in failures), key="score-catalog-failures")
    return {"run": run.id, **counts}
