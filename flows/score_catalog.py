"""Score every video of a library.

    list -> register -> for each video not done:
        prepare (lease, download, probe, shots + frames, visual tokens)   media workers, in parallel
        compose (windows of music tokens -> audio)                         the GPU, under the `gpu` limit
        finish  (stitch, normalise, mux, report, upload, record, release)  media workers, in parallel

The flow keeps the model busy: while it composes, the task runner prepares the next videos, and the
windows of all videos that are ready together are generated in one batch. A video that fails is
recorded with its stage and cause and the run goes on; the flow fails only when the infrastructure does
(storage or database unreachable after retries). A rerun skips what is done.

Swap the task runner for `prefect_dask.DaskTaskRunner` (`gvmgen score --dask ADDRESS`) and prepare and
finish run on a Dask cluster, while compose stays with the flow on the GPU machine.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath

from prefect import flow, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from gvmgen.generate import GenerationSettings
from gvmgen.model.checkpoints import load_model
from gvmgen.pipeline import PreparedVideo, ScoreSettings, compose, finish, prepare
from storage import registry
from storage import repository as repo
from storage.db import connect, database_url
from storage.models import Job, ModelVersion, Run, Video
from storage.objects import ObjectInfo, fetch_copy, open_store

WORKER = f"{socket.gethostname()}:{os.getpid()}"
GPU_LIMIT = "gpu"            # the global concurrency limit that model work runs under
RETRY = dict(retries=3, retry_delay_seconds=[2, 10, 30])  # where a retry can help: storage, database


@functools.lru_cache(maxsize=2)
def cached_model(name: str):
    """Loaded once per worker process, not once per video, on the GPU when there is one. `name` is a
    preset, a checkpoint folder, or a model version published by the finetune flow."""
    import torch

    with sessions() as session:
        spec = registry.resolve(session, name)
    return load_model(spec, device="cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=4)
def _sessions(url: str):
    return connect(url)


def sessions():
    return _sessions(database_url())()


@dataclass(frozen=True)
class RunContext:
    """What every task of one run needs to know; small and picklable (Dask ships it to workers)."""
    run_id: int
    model_version_id: int
    source: str
    output: str
    model: str
    settings: dict
    retry_failed: bool
    lease_s: float

    @property
    def score_settings(self) -> ScoreSettings:
        return ScoreSettings(generation=GenerationSettings(**self.settings))


@dataclass
class ClaimedVideo:
    """A video this worker holds the lease on, prepared and waiting for the model."""
    video_id: int
    job_id: int
    key: str
    work: Path                 # a private scratch folder, removed when the video is finished
    prepared: PreparedVideo
    sample_rate: int
    started: float = field(default_factory=time.perf_counter)


def result_row(key: str, status: str, started: float | None = None, claimed: ClaimedVideo | None = None,
               loudness_lufs: float | None = None) -> dict:
    """One row of the run's table artifact."""
    info = claimed.prepared.analysis if claimed else None
    return {"video": key, "duration": round(info.info.duration, 2) if info else None,
            "shots": len(info.shots) if info else None, "windows": len(claimed.prepared.windows) if claimed else None,
            "loudness_lufs": None if loudness_lufs is None else round(loudness_lufs, 1),
            "seconds": None if started is None else round(time.perf_counter() - started, 1), "status": status}


def fail(session, ctx: RunContext, video: Video, job: Job, stage: str, error: Exception, started: float,
         claimed: ClaimedVideo | None = None) -> dict:
    """Record why a video failed, give its lease back as failed, and clean its scratch folder."""
    repo.record_error(session, video, session.get(Run, ctx.run_id), stage, f"{type(error).__name__}: {error}")
    repo.release(session, job, WORKER, "failed")
    if claimed:
        shutil.rmtree(claimed.work, ignore_errors=True)
    return result_row(video.key, "failed", started, claimed)


# ---- tasks ---------------------------------------------------------------------------------------------
@task(**RETRY)
def list_library(source: str) -> list[ObjectInfo]:
    return list(open_store(source).list())


@task(**RETRY)
def register_videos(source: str, catalog_name: str, objects: list[ObjectInfo]) -> list[int]:
    store = open_store(source)
    with sessions() as session:
        cat = repo.catalog(session, catalog_name, source)
        ids = []
        for obj in objects:
            digest = obj.etag and f"etag:{obj.etag}" or store.content_hash(obj.key)
            video, _ = repo.register_video(session, cat, obj, store.uri(obj.key), digest)
            ids.append(video.id)
        return ids


@task(**RETRY)
def open_run(source: str, output: str, catalog_name: str, model: str, settings: dict, parameters: dict,
             videos: int) -> tuple[int, int]:
    with sessions() as session:
        cat = repo.catalog(session, catalog_name, source)
        model_row = repo.model_version(session, model, checkpoint_uri=model if "/" in model else f"preset:{model}")
        run = repo.start_run(session, cat, model_row, settings, parameters, videos=videos,
                             flow_run_id=str(flow_run.get_id() or ""))
        return run.id, model_row.id


@task(**RETRY)
def ensure_gpu_limit(slots: int) -> None:
    """The `gpu` limit is created with `slots` slots the first time; after that it is the operator's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))


@task(cache_policy=NO_CACHE)
def prepare_video(video_id: int, ctx: RunContext) -> ClaimedVideo | dict:
    """Lease, download and prepare one video; a row (skipped or failed) when there is nothing to compose."""
    started = time.perf_counter()
    with sessions() as session:
        video, model_row = session.get(Video, video_id), session.get(ModelVersion, ctx.model_version_id)
        job = repo.claim(session, video, model_row, repo.settings_hash(ctx.settings), owner=WORKER,
                         lease_s=ctx.lease_s, retry_failed=ctx.retry_failed)
        if job is None:  # done, failed before, or leased by a live worker
            return result_row(video.key, "skipped")
        work = Path(tempfile.mkdtemp(prefix="gvmgen-"))
        stage = "download"
        try:
            local = open_store(ctx.source).download(video.key, work / "in" / PurePosixPath(video.key).name)
            stage = "prepare"
            prepared = prepare(cached_model(ctx.model), local, ctx.score_settings)
            info = prepared.analysis.info
            repo.record_probe(session, video, duration=info.duration, width=info.width, height=info.height,
                              fps=prepared.analysis.fps, rotation=info.rotation, audio_streams=info.audio_streams,
                              shots=prepared.analysis.shots)
        except Exception as e:  # one bad video never stops the catalog
            shutil.rmtree(work, ignore_errors=True)
            return fail(session, ctx, video, job, stage, e, started)
        return ClaimedVideo(video_id, job.id, video.key, work, prepared, cached_model(ctx.model).config.sample_rate,
                            started)


@task(cache_policy=NO_CACHE)
def compose_music(claimed: list[ClaimedVideo], ctx: RunContext) -> list:
    """Music for several videos in shared batches, one batch at a time per `gpu` slot.

    Returns per video its track, or its failure row. A batch that fails (out of memory, say) is tried
    again one video at a time, so one bad video cannot fail its batch-mates. Leases are renewed as the
    model works, so a long video is not taken by another worker meanwhile.
    """
    model = cached_model(ctx.model)
    last_renewal = [time.monotonic()]

    def renew_leases(*_):
        if time.monotonic() - last_renewal[0] > ctx.lease_s / 4:
            with sessions() as session:
                for c in claimed:
                    repo.renew(session, session.get(Job, c.job_id), WORKER, ctx.lease_s)
            last_renewal[0] = time.monotonic()

    def run(batch: list[ClaimedVideo]) -> list:
        with concurrency(GPU_LIMIT, occupy=1):
            return compose(model, [c.prepared for c in batch], ctx.score_settings, progress=renew_leases)

    try:
        return run(claimed)
    except Exception as e:
        if len(claimed) == 1:
            return [_compose_failure(claimed[0], ctx, e)]
    results = []
    for c in claimed:
        try:
            results.extend(run([c]))
        except Exception as e:
            results.append(_compose_failure(c, ctx, e))
    return results


def _compose_failure(claimed: ClaimedVideo, ctx: RunContext, error: Exception) -> dict:
    with sessions() as session:
        return fail(session, ctx, session.get(Video, claimed.video_id), session.get(Job, claimed.job_id), "compose",
                    error, claimed.started, claimed)


@task(**RETRY)
def upload(output: str, path: Path, key: str) -> str:
    return open_store(output).upload(path, key)


@task(cache_policy=NO_CACHE)
def finish_video(claimed: ClaimedVideo, track, ctx: RunContext) -> dict:
    """Normalise, mux, draw the report, upload all three beside each other, record, release."""
    with sessions() as session:
        video, job = session.get(Video, claimed.video_id), session.get(Job, claimed.job_id)
        stage = "finish"
        try:
            out_key = PurePosixPath(claimed.key)
            done = finish(claimed.prepared, track, claimed.sample_rate, claimed.work / "out" / out_key.name,
                          ctx.score_settings)
            if not repo.renew(session, job, WORKER, ctx.lease_s):  # our lease ran out and another worker has it
                shutil.rmtree(claimed.work, ignore_errors=True)
                return result_row(claimed.key, "skipped", claimed.started, claimed)
            stage = "upload"
            track_uri = upload(ctx.output, done.track, str(out_key.with_suffix(".wav")))
            report_uri = upload(ctx.output, done.report, str(out_key.with_suffix(".report.png")))
            video_uri = upload(ctx.output, done.video, str(out_key))  # last: its presence means "scored"
        except Exception as e:
            return fail(session, ctx, video, job, stage, e, claimed.started, claimed)
        repo.complete(session, job, WORKER, video, session.get(ModelVersion, ctx.model_version_id),
                      session.get(Run, ctx.run_id), ctx.settings, video_uri=video_uri, track_uri=track_uri,
                      report_uri=report_uri, loudness_lufs=done.loudness.output_lufs,
                      true_peak_dbtp=done.loudness.true_peak_dbtp, seed=ctx.settings.get("seed"),
                      windows=[[round(a, 3), round(b, 3)] for a, b in claimed.prepared.windows])
    shutil.rmtree(claimed.work, ignore_errors=True)
    return result_row(claimed.key, "scored", claimed.started, claimed, done.loudness.output_lufs)


@task(**RETRY)
def copy_duplicates(ctx: RunContext, keys: list[str]) -> list[str]:
    """Skipped videos whose content was scored under another key (the same file twice in a library) get
    that output's video, track and report under their own key: every video has its scored copy, and
    the work is done once. Returns the keys copied."""
    copied = []
    out = open_store(ctx.output)
    with sessions() as session, tempfile.TemporaryDirectory(prefix="gvmgen-") as work:
        run, model_row = session.get(Run, ctx.run_id), session.get(ModelVersion, ctx.model_version_id)
        for key in keys:
            video = repo.video_by_key(session, run.catalog_id, key)
            output = repo.done(session, video, model_row, repo.settings_hash(ctx.settings))
            target = PurePosixPath(key)
            if output is None or output.video_id == video.id or out.exists(str(target)):
                continue
            sources = [(output.track_uri, target.with_suffix(".wav")), (output.report_uri, target.with_suffix(".report.png")),
                       (output.video_uri, target)]  # the video last: its presence means "scored"
            for uri, name in sources:
                if uri:
                    folder, file = uri.rsplit("/", 1)
                    local = fetch_copy(open_store(folder), file, Path(work) / f"{len(copied)}-{file}")
                    out.upload(local, str(name))
            copied.append(key)
    return copied


def status_counts(rows: list[dict]) -> dict[str, int]:
    """scored / skipped / failed; a copied duplicate counts as skipped (no work was done for it)."""
    statuses = [{"copied": "skipped"}.get(r["status"], r["status"]) for r in rows]
    return {s: statuses.count(s) for s in ("scored", "skipped", "failed")}


@task(**RETRY)
def close_run(run_id: int, rows: list[dict]) -> list[tuple[str, str, str]]:
    """Finish the run's row with its counts; return its failures as (video, stage, cause)."""
    with sessions() as session:
        run = session.get(Run, run_id)
        repo.finish_run(session, run, "completed", **status_counts(rows))
        return [(video.key, error.stage, error.cause) for error, video in repo.errors(session, run)]


# ---- the flow ------------------------------------------------------------------------------------------
def _ready(futures: list[PrefectFuture], most: int) -> list[PrefectFuture]:
    """Wait for one future to finish, then take up to `most` of those finished by now."""
    first = next(as_completed(futures))
    others = [f for f in futures if f is not first and f.state.is_final()]
    return [first, *others[:most - 1]]


@flow(name="score-catalog", task_runner=ThreadPoolTaskRunner(max_workers=4))
def score_catalog(source: str, output: str, model: str = "tiny", stitch: str = "continue", seed: int | None = 0,
                  catalog_name: str | None = None, retry_failed: bool = False, lease_s: float = 900,
                  batch_videos: int = 4, gpu_slots: int = 1) -> dict:
    """Score the videos of `source` (a folder or s3://bucket/prefix) into `output`.

    `batch_videos`: at most this many ready videos share the model's batches (and twice as many are
    prepared ahead). `lease_s`: how long a worker's claim on a video lasts; a crashed worker's videos
    are taken again once it runs out. `gpu_slots`: the size of the `gpu` limit when it is first made.
    """
    settings = asdict(GenerationSettings(stitch=stitch, seed=seed))
    catalog_name = catalog_name or source
    video_ids = register_videos(source, catalog_name, list_library(source))
    parameters = {"source": source, "output": output, "model": model, "stitch": stitch, "seed": seed}
    run_id, model_version_id = open_run(source, output, catalog_name, model, settings, parameters, len(video_ids))
    ensure_gpu_limit(gpu_slots)
    ctx = RunContext(run_id, model_version_id, source, output, model, settings, retry_failed, lease_s)

    progress = create_progress_artifact(0.0, key="score-catalog-progress", description="videos handled")
    rows: list[dict] = []

    def handled(row: dict) -> None:
        rows.append(row)
        update_progress_artifact(progress, 100.0 * len(rows) / max(1, len(video_ids)))
        with sessions() as session:
            repo.count_handled(session, run_id, row["status"])

    waiting, preparing, finishing = iter(video_ids), [], []
    preparing += [prepare_video.submit(v, ctx) for v in islice(waiting, 2 * batch_videos)]
    while preparing:
        ready = _ready(preparing, batch_videos)
        preparing = [f for f in preparing if f not in ready]
        preparing += [prepare_video.submit(v, ctx) for v in islice(waiting, len(ready))]
        claimed = []
        for result in (f.result() for f in ready):
            if isinstance(result, ClaimedVideo):
                claimed.append(result)
            else:
                handled(result)
        if claimed:
            for c, track in zip(claimed, compose_music(claimed, ctx)):
                if isinstance(track, dict):
                    handled(track)
                else:
                    finishing.append(finish_video.submit(c, track, ctx))
        for f in [f for f in finishing if f.state.is_final()]:
            handled(f.result())
            finishing.remove(f)
    for f in as_completed(finishing):
        handled(f.result())
    copied = set(copy_duplicates(ctx, [r["video"] for r in rows if r["status"] == "skipped"]))
    for row in rows:
        if row["video"] in copied:
            row["status"] = "copied"

    failures = close_run(run_id, rows)
    counts = status_counts(rows)
    create_table_artifact(sorted(rows, key=lambda r: r["video"]), key="score-catalog-results",
                          description=f"run {run_id}: {counts}")
    if failures:
        create_markdown_artifact("## Failed videos\n\n" + "\n".join(
            f"- `{key}` ({stage}): {cause}" for key, stage, cause in failures), key="score-catalog-failures")
    return {"run": run_id, **counts}
