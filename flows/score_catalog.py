"""Score every video of a library.

    check (parameters, output writable, model loadable) -> list -> register -> for each video not done:
        prepare (lease, download, probe, shots + frames, visual tokens)   media workers, in parallel
        compose (windows of music tokens -> audio)                         the GPU, under the `gpu` limit
        finish  (stitch, normalise, mux, report, upload, record, release)  media workers, in parallel

The flow keeps the model busy: while it composes, the task runner prepares the next videos, and up to
`batch_videos` videos compose together window by window, a prepared video taking the place of one that
is done at the next window (continuous batching, `gvmgen.generate.Composer`).

Two kinds of failure, told apart by exception type where they happen:
- the *video's* (MediaError: not a video, truncated, undecodable; ObjectError: an unsafe or unreadable
  key) is recorded against its content, its task run ends Failed with the cause, and the run goes on.
  It is not tried again until the file changes or `retry_failed` is given;
- the *infrastructure's* (everything else: weights, CUDA, the object store, the database, the disk) is
  never blamed on the video: its lease is released, the video stays pending for the next run, and the
  run stops taking new videos and ends with an exception. After MAX_ATTEMPTS such failures of one
  video it is failed with "gave up after N attempts: <cause>", so one poisoned video cannot stop
  every night's run.
The flow run ends Completed when every video of the catalog has its output, Failed ("2 of 40 videos
failed") when some video stands failed, in this run or an earlier one. A rerun (or Retry in the
Prefect UI) takes what is retryable and skips what is done; an interrupted run (SIGTERM, Ctrl-C)
hands its leases back, so a rerun right after it finishes the catalog.

Swap the task runner for `prefect_dask.DaskTaskRunner` (`gvmgen score --dask ADDRESS`) and prepare and
finish run on a Dask cluster, while compose stays with the flow on the GPU machine.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.concurrency.sync import concurrency
from prefect.exceptions import TerminationSignal
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows import BATCH_RANGE, LEASE_RANGE, stacks_on_sigusr1
from gvmgen.files import scratch
from gvmgen.generate import Composer, MusicGenerator
from gvmgen.media.mux import check_container
from gvmgen.media.probe import MediaError
from gvmgen.model.checkpoints import load_for_scoring
from gvmgen.pipeline import PreparedVideo, VideoFrames, encode, extract_frames, finish, prepare
from gvmgen.settings import TRACK_FORMATS, ScoreSettings
from storage import registry
from storage import repository as repo
from storage.db import connect, database_url
from storage.models import Job, ModelVersion, Output, Run, Video, VideoError
from storage.objects import (ObjectError, ObjectInfo, Store, canonical, fetch_copy, library_exclusion, local_name,
                             locate, open_store, VIDEO_EXTENSIONS)

GPU_LIMIT = "gpu"            # the global concurrency limit that model work runs under
GPU_LEASE_S = 60             # renewed while held; a killed process's slot is reclaimed after this (the least Prefect takes)
MAX_ATTEMPTS = 3             # infrastructure failures of one video before it is failed
VIDEO_FAULTS = (MediaError, ObjectError)  # the file's fault; anything else is the infrastructure's
# The flow's threads: one composes for the whole run, the rest prepare and finish (ffmpeg, scene
# detection, loudness, uploads). A core each (those this process may use): a fixed four left three videos
# at a time to prepare and finish on any host, with 2 x batch_videos waiting. Four at the least, so a small
# machine overlaps too; eight at the most, as each holds a database connection (SQLAlchemy's pool: 15)
# beside the lease keeper's and the flow's, and ffmpeg runs threads of its own.
MEDIA_THREADS = min(8, max(4, len(os.sched_getaffinity(0))))
# How long a thread running Python may keep the GIL from one that waits for it (Python's default: 5 ms).
# Every kernel launch hands the GIL back and waits that long for it beside the media threads' Python (shot
# detection, loudness): CLIP launches some 600 kernels a chunk of frames, the decoder one replay a 16 steps.
# bench/gil.py: 5.3 ms a launch at 5 ms, 1.2 ms at 1 ms; pure-Python threads lose a few percent at most.
GIL_SWITCH_S = 0.001
_STOP = threading.Event()    # set when the run is interrupted: tasks take no new work
_LOCAL_GPU = threading.Lock()


# The flow and its tasks reach the flag through these two functions, which pickle by name: Dask ships
# the flow's code to its workers, and an Event cannot be pickled.
def interrupted() -> bool:
    return _STOP.is_set()


def interrupt(on: bool = True) -> None:
    _STOP.set() if on else _STOP.clear()


def worker_id() -> str:
    """The process calling it, as the owner of leases (host:pid). A video's lease is taken by the process
    that prepares it (a thread of the flow's, or a Dask worker) and travels with the video to the tasks
    that finish it (ClaimedVideo.owner)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a task that returns a Failed state (a failed video) with exc_info outside any
    exception, which prints a stray "NoneType: None" line under it in every log: that is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info == (None, None, None):
            record.exc_info = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_NoEmptyTraceback())


class VideosFailed(Exception):
    """Some videos of the catalog stand failed; `summary` has the counts (what the flow returns)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):
        return type(self), (str(self), self.summary)


class InfrastructureError(RuntimeError):
    """The run stopped because the machine, the store, the database or the model failed; its
    unfinished videos are pending for the next run."""


def preflight(source: str, output: str, model: str, settings: dict | None, batch_videos: int,
              lease_s: float) -> ScoreSettings:
    """Everything that can be wrong before any work, each raising one line: the settings and the
    options' ranges, the library (its first listing page), the output (not the library, written to
    and cleaned), the model (loaded, and kept for the run). The flow runs it first; the CLI runs it
    before starting Prefect, so a usage error costs nothing (in the same process the second call
    finds the model loaded). Returns the settings, complete."""
    score_settings = ScoreSettings.from_dict(settings)
    for name, flag, value, (low, high) in (("batch_videos", "--batch-videos", batch_videos, BATCH_RANGE),
                                           ("lease_s", "--lease", lease_s, LEASE_RANGE)):
        if not low <= value <= high:   # named as the flow and the command line name it
            raise ValueError(f"{name} ({flag}) must lie between {low} and {high}, got {value}")
    library_exclusion(source, output)  # refuses an output that would overwrite the library
    next(iter(open_store(source, single=True).list()), None)
    open_store(output).check_writable()
    cached_model(model)  # missing or broken weights stop here, before any video is touched
    return score_settings


@contextlib.contextmanager
def graphs_captured_meanwhile(ctx: RunContext, batch_videos: int):
    """The GPU has nothing to do while the first videos are prepared: capture the decoder's CUDA graphs
    for every batch the run can compose then, in a thread, rather than inside the first composes (a
    batch size takes seconds). A compose that comes first waits for it (the decoder's lock); leaving
    the block stops the capture at its next graph and waits for it. Nothing to capture on a CPU."""
    logger = get_run_logger()
    generator = MusicGenerator(cached_model(ctx.model), ctx.score_settings.generation)
    stop = threading.Event()

    def capture() -> None:
        try:
            generator.capture_graphs(batch_videos, stop.is_set)
        except Exception as e:  # a graph still missing is captured when first needed, which meets the fault itself
            logger.warning(f"capturing the decoder's graphs ahead failed ({e}); they are captured when needed")

    thread = threading.Thread(target=capture, name="capture-graphs")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@functools.lru_cache(maxsize=2)
def cached_model(name: str):
    """Loaded once per worker process, not once per video, on the GPU when there is one. `name` is a
    preset, a checkpoint folder, or a model version published by the finetune flow."""
    import torch

    with sessions() as session:
        spec = registry.resolve(session, name)
    return load_for_scoring(spec, device="cuda" if torch.cuda.is_available() else "cpu")


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
    settings: dict             # ScoreSettings.to_dict(): what the result key hashes
    retry_failed: bool
    overwrite: bool            # replace output files that no run of ours wrote
    lease_s: float
    owner: str                 # the run's process (the runs row names it); leases are held per process
    sample_rate: int           # the model's, known without loading it where the media work runs
    image_size: int | None     # set when media work runs on other machines (Dask): they send frames of
                               # this size and the model's process encodes them; never load the model


    @property
    def score_settings(self) -> ScoreSettings:
        return ScoreSettings.from_dict(self.settings)


@dataclass
class ClaimedVideo:
    """A video this run holds the lease on, prepared (or, from a media worker, its frames) and
    waiting for the model."""
    video_id: int
    job_id: int
    owner: str                 # the process that took the lease: renewals and the release are in its name
    key: str
    uri: str
    work: Path                 # a private scratch folder, removed when the video is finished
    prepared: PreparedVideo | None
    frames: VideoFrames | None = None
    started: float = field(default_factory=time.perf_counter)


def result_row(key: str, status: str, started: float | None = None, claimed: ClaimedVideo | None = None,
               loudness_lufs: float | None = None, cause: str | None = None, note: str | None = None) -> dict:
    """One row of the run's table artifact. status: scored, skipped (done before), copied, failed,
    failed earlier, pending (left for the next run: infrastructure), elsewhere (leased by a live worker)."""
    prepared = claimed.prepared if claimed else None
    info = prepared.analysis if prepared else claimed.frames.analysis if claimed else None
    return {"video": key, "duration": round(info.info.duration, 2) if info else None,
            "shots": len(info.shots) if info else None, "windows": len(prepared.windows) if prepared else None,
            "loudness_lufs": None if loudness_lufs is None else round(loudness_lufs, 1),
            "seconds": None if started is None else round(time.perf_counter() - started, 1), "status": status,
            "cause": cause, "note": note}


def describe(error: BaseException, uri: str) -> str:
    """A one-line cause that names the video by its URI, never by a scratch path."""
    if isinstance(error, MediaError):
        return f"{uri}: {error.cause}"
    if isinstance(error, ObjectError):
        return str(error)
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def fail(session, ctx: RunContext, owner: str, video: Video, job: Job, stage: str, error: BaseException,
         started: float, claimed: ClaimedVideo | None = None) -> dict:
    """Classify a failure and act on it: the video's is recorded and its lease given back as failed;
    the infrastructure's gives the lease back as pending (or, after MAX_ATTEMPTS, fails the video)."""
    if claimed:
        shutil.rmtree(claimed.work, ignore_errors=True)
    if interrupted():  # whatever failed as the run was stopped (a Ctrl-C reaches ffmpeg too) is no video's fault
        repo.release_owner(session, owner, job)
        return result_row(video.key, "pending", started, claimed, cause="the run was interrupted")
    cause = describe(error, video.source_uri)
    if not isinstance(error, VIDEO_FAULTS):
        if job.attempts < MAX_ATTEMPTS:
            repo.release(session, job, owner, "pending")
            return result_row(video.key, "pending", started, claimed, cause=f"infrastructure ({stage}): {cause}")
        cause = f"gave up after {job.attempts} attempts: {cause}"
    repo.record_error(session, video, session.get(Run, ctx.run_id), stage, cause)
    repo.release(session, job, owner, "failed")
    return result_row(video.key, "failed", started, claimed, cause=cause)


def as_state(row: dict) -> dict | State:
    """A video's task run ends Failed, with the cause as its message, when the video failed or was
    left pending; the row travels as the state's data either way."""
    if row["status"] in ("failed", "pending"):
        return Failed(message=row["cause"], data=row)
    return Completed(data=row)


# Not worth running again: a bad object key, a missing folder, a refused permission (they would fail the
# same way), failed videos (failed for their files)
NOT_RETRIED = (*VIDEO_FAULTS, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def only_infrastructure(task, task_run, state) -> bool:
    """Retry condition: a storage or database hiccup is worth a retry; NOT_RETRIED are not."""
    try:
        state.result()
    except NOT_RETRIED:
        return False
    except BaseException:
        return True
    return False


RETRY = dict(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=only_infrastructure,
             cache_policy=NO_CACHE)


def gpu_slot():
    """Model work holds one slot of the `gpu` limit of the Prefect server the fleet shares. In embedded
    mode (no PREFECT_API_URL: Prefect's temporary server, one per process) it holds a lock of this
    process instead: that server does not run the service that reclaims the slot of a killed process,
    so a Ctrl-C or SIGKILL at the wrong moment would leave the limit full for every later run."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return concurrency(GPU_LIMIT, occupy=1, lease_duration=GPU_LEASE_S)
    return _LOCAL_GPU


# ---- tasks ---------------------------------------------------------------------------------------------
@task(**RETRY)
def list_library(source: str, output: str | None = None) -> list[ObjectInfo]:
    """The library's videos, less any output folder inside it, this run's or an earlier run's: scored
    videos are neither scored again nor trained on."""
    excluded = {library_exclusion(source, output)} if output else set()
    with sessions() as session:
        for earlier in repo.output_locations(session) - {output}:
            try:
                excluded.add(library_exclusion(source, earlier))
            except ValueError:  # the library is that output, or a video of it named alone: taken as asked
                pass
    excluded.discard(None)
    found = list(open_store(source, single=True).list())
    kept = [o for o in found if not o.key.startswith(tuple(excluded))]
    if len(kept) < len(found):
        get_run_logger().info(f"{len(found) - len(kept)} video(s) under {', '.join(sorted(excluded))} left out: "
                              "scored videos of this run or an earlier one")
    return kept


@task(**RETRY)
def register_videos(source: str, catalog_name: str, objects: list[ObjectInfo]) -> list[int]:
    store = open_store(source, single=True)
    with sessions() as session:
        cat = repo.catalog(session, catalog_name, source)
        known = repo.catalog_videos(session, cat)
        ids = []
        for obj in objects:
            try:
                if obj.etag:
                    digest = f"etag:{obj.etag}"
                else:  # a local file (S3 lists an ETag). One unreadable now gets a stand-in hash (below), never
                    # its content's: once readable again, it must not find its content failed
                    digest = store.readable(obj.key) and repo.unchanged_hash(known.get(obj.key), obj) \
                        or store.content_hash(obj.key)
            except ObjectError:  # unreadable: registered all the same, and failed when it is prepared
                digest = f"unreadable:{obj.size}:{obj.modified.timestamp()}"
            video, _ = repo.register_video(session, cat, obj, store.uri(obj.key), digest)
            ids.append(video.id)
        repo.mark_removed(session, list(known.values()), {obj.key for obj in objects})
        return ids


@task(**RETRY)
def open_run(source: str, output: str, catalog_name: str, model: str, settings: dict, parameters: dict,
             videos: int, owner: str) -> tuple[int, int]:
    with sessions() as session:
        cat = repo.catalog(session, catalog_name, source)
        model_row = registry.version_for(session, model)
        if model_row.name.startswith("/"):  # a checkpoint folder, recorded absolute: retry-failed runs from anywhere
            parameters = {**parameters, "model": model_row.name}
        run = repo.start_run(session, cat, model_row, settings, parameters, videos=videos,
                             flow_run_id=str(flow_run.get_id() or "") or None, worker=owner)
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


def not_claimed(session, ctx: RunContext, owner: str, video: Video, model_row: ModelVersion) -> dict:
    """Why the lease was not ours: done before (or the same content under another key of this run: it
    gets that output's copy), failed before (and not retried), or leased by another worker."""
    job = repo.job_of(session, video, model_row, repo.settings_hash(ctx.settings))
    if job.status == "done" or job.owner == owner:
        return result_row(video.key, "skipped")
    if job.status == "failed":
        error = repo.content_error(session, video.content_hash)
        if error is not None and error.run_id == ctx.run_id:  # its content failed in this run, under another key
            return result_row(video.key, "failed", cause=repo.cause_for(video, error))
        return failed_earlier(video, error)
    return result_row(video.key, "elsewhere", cause=f"leased by {job.owner}")


def failed_earlier(video: Video, error: VideoError | None) -> dict:
    """The row of a video that stands failed: the cause it failed with, or that its content failed with
    under another key (another catalog's, say)."""
    cause = "failed before" if error is None else repo.cause_for(video, error)
    return result_row(video.key, "failed earlier", cause=cause)


@task(**RETRY)
def settled_videos(ctx: RunContext, video_ids: list[int]) -> dict[int, dict]:
    """The videos with nothing to do, found for the whole catalog at once rather than by a task run
    each (a nightly run of a large catalog is mostly these): done, with their scored copy whole in the
    output, and failed earlier (unless retried). Their rows, by video id; prepare_video takes the rest."""
    wanted = set(video_ids)
    with sessions() as session:
        found = [(video, status, output) for video, status, output in repo.settled(
            session, session.get(Run, ctx.run_id).catalog_id, ctx.model_version_id, repo.settings_hash(ctx.settings),
            ("done",) if ctx.retry_failed else ("done", "failed")) if video.id in wanted]
        out = Outputs.listed(session, open_store(ctx.output)) if found else None
        errors = repo.latest_errors(session, [video.id for video, status, _ in found if status == "failed"])
        rows = {video.id: failed_earlier(video, errors.get(video.id) or repo.content_error(session, video.content_hash))
                for video, status, _ in found if status == "failed"}
        rows.update((video.id, {**result_row(video.key, "skipped"), "in_output": True}) for video, status, output in found
                    if status == "done" and output and out.whole(video.key, output))
        return rows


def scored_files(key: str, output: Output) -> list[tuple[str, str]]:
    """(recorded URI, key in an output) of a video's track, report and scored video: the video last, for
    its presence means "scored"."""
    target = PurePosixPath(key)
    files = [(output.track_uri, target.with_suffix(PurePosixPath(output.track_uri).suffix)),
             (output.report_uri, target.with_suffix(".report.png")), (output.video_uri, target)]
    return [(uri, str(name)) for uri, name in files if uri]


def name_clashes(keys: list[str]) -> dict[str, str]:
    """Videos whose track and report would land on those of another (`a.mov` beside `a.mp4`: both
    `a.flac`, `a.report.png`), each with the one that keeps those names: the first in `keys`, which come
    oldest first, so that a video added later never takes the names of one scored before."""
    first: dict[str, str] = {}
    clashes = {}
    for key in keys:
        stem = str(PurePosixPath(key).with_suffix(""))
        if stem in first:
            clashes[key] = first[stem]
        else:
            first[stem] = key
    return clashes


@task(**RETRY)
def refuse_clashes(ctx: RunContext, clashes: dict[int, str]) -> dict[int, dict]:
    """Fail (this run, each run until one is renamed) the videos whose output names another video holds:
    failed rows by video id, and their errors recorded. Their jobs are left as they are."""
    with sessions() as session:
        run, rows = session.get(Run, ctx.run_id), {}
        for video_id, other in clashes.items():
            video = session.get(Video, video_id)
            stem = PurePosixPath(video.key).with_suffix("")
            track = f"{stem}.{ctx.score_settings.delivery.track_format}"
            cause = (f"{video.source_uri}: its track and report would overwrite those of {other} ({track}, "
                     f"{stem}.report.png in the output): rename one of the two")
            repo.record_error(session, video, run, "output", cause)
            rows[video_id] = result_row(video.key, "failed", cause=cause)
        return rows


class Outputs:
    """An output store as a run judges it: which of its files are gvmgen's deliveries (see
    `repo.holding`), and of which job. `listed`: from one listing and one query for a whole catalog;
    else the store and the database are asked file by file."""

    def __init__(self, session, store: Store, listing: dict[str, ObjectInfo] | None = None,
                 delivered: dict | None = None):
        self.session, self.store, self.listing, self.delivered = session, store, listing, delivered

    @classmethod
    def listed(cls, session, store: Store) -> Outputs:
        try:
            listing = {o.key: o for o in store.list(VIDEO_EXTENSIONS + tuple(f".{f}" for f in TRACK_FORMATS) + (".png",))}
        except NotADirectoryError:  # no output folder yet
            listing = {}
        return cls(session, store, listing, repo.deliveries(session, store.uri("")))

    def found(self, name: str) -> ObjectInfo | None:
        return self.listing.get(name) if self.listing is not None else self.store.info(name)

    def held(self, name: str, output: Output | None = None):
        """The delivery the file at `name` is (of `output`'s job, if given), or None."""
        uri = self.store.uri(name)
        here = self.delivered.get(uri) if self.delivered is not None else repo.delivery(self.session, uri)
        found = self.found(name)
        held = repo.holding(self.session, here, uri, found, lambda: self.store.digest(found), output)
        return held if held is not None and (output is None or repo.of_job(held, output)) else None

    def whole(self, key: str, output: Output) -> bool:
        """Whether the video's scored copy is here whole, as gvmgen wrote it and of this very output's job
        (not of content the source held before): the scored video, its track and its report."""
        return all(self.held(name, output) for _, name in scored_files(key, output))

    def foreign(self, names: list[str], key: str) -> str | None:
        """The URI of the first of these files (those of the video at `key`) that is there and that gvmgen
        did not write, if any: it is kept, and the video fails with it named, unless --overwrite."""
        cut_off = repo.destined(self.session, self.store.uri(key))  # a scored video's upload a crash cut off
        return next((self.store.uri(n) for n in names if self.found(n) is not None and self.held(n) is None
                     and not (n == key and cut_off)), None)


def recorded_copy_kept(session, output: Output, video: Video) -> bool:
    """Whether a recorded output's files are all still in their store as gvmgen wrote them, and of its
    job (a later job may have written over them: the same key, another content or settings). A store
    that cannot tell keeps the video done: a fault there must neither redo the work nor stop the run."""
    try:
        for uri, _ in scored_files(video.key, output):
            store, file = locate(uri)
            if not Outputs(session, store).held(file, output):
                return False
        return True
    except ObjectError as e:
        get_run_logger().warning(f"{video.key}: whether its scored copy {output.video_uri} is still there is "
                                 f"unknown ({e}); it stays done")
        return True


def foreign_output(session, ctx: RunContext, video: Video) -> str | None:
    """The URI of a file already at the video's output key or beside it that gvmgen did not write (and
    --overwrite is off)."""
    target = PurePosixPath(video.key)
    names = [str(target.with_suffix(f".{ctx.score_settings.delivery.track_format}")),
             str(target.with_suffix(".report.png")), video.key]
    return None if ctx.overwrite else Outputs(session, open_store(ctx.output)).foreign(names, video.key)


def deliverable(video: Video, codec: str | None = None) -> None:
    """A MediaError (the video's fault) unless its scored copy can be written in its own container (with
    `codec` picture, once probed)."""
    try:
        check_container(PurePosixPath(video.key), codec)
    except ValueError as e:
        raise MediaError(video.source_uri, str(e).split(": ", 1)[-1]) from None


@task(cache_policy=NO_CACHE)
def prepare_video(video_id: int, ctx: RunContext):
    """Lease, download and prepare one video; a row (skipped, failed, ...) when there is nothing to compose."""
    started = time.perf_counter()
    owner = worker_id()  # this process: a thread of the flow's, or a Dask worker
    with sessions() as session:
        video, model_row = session.get(Video, video_id), session.get(ModelVersion, ctx.model_version_id)
        if interrupted():
            return as_state(result_row(video.key, "pending", cause="the run was interrupted"))
        key = repo.settings_hash(ctx.settings)
        claim = functools.partial(repo.claim, session, video, model_row, key, owner=owner, lease_s=ctx.lease_s,
                                  retry_failed=ctx.retry_failed)
        job = claim()
        if job is None:
            # Done before, or a duplicate of a video this run scores. Scored again if its recorded scored
            # video was deleted or replaced since (its job is reopened).
            if repo.reopen_lost(session, video, model_row, key, lambda output: recorded_copy_kept(session, output, video)):
                job = claim()
        if job is None:  # the flow puts the scored copy here, where this output lacks it
            return as_state(not_claimed(session, ctx, owner, video, model_row))
        work = Path(tempfile.mkdtemp(dir=scratch()))
        stage = "output"
        try:
            taken = foreign_output(session, ctx, video)  # an unsafe key raises here: the video's fault
            if taken:  # nor is this the video's fault: it is scored once the file is moved, or with --overwrite
                shutil.rmtree(work, ignore_errors=True)
                cause = f"{taken} exists and gvmgen did not write it (--overwrite replaces it)"
                repo.record_error(session, video, session.get(Run, ctx.run_id), stage, cause)
                repo.release_owner(session, owner, job)  # the attempt not counted: it is no fault to retry
                return as_state(result_row(video.key, "failed", started, cause=cause))
            deliverable(video)   # a container gvmgen cannot write back fails before the download
            stage = "download"
            local = open_store(ctx.source, single=True).download(video.key, work / "in")
            stage = "prepare"
            if ctx.image_size:  # a media worker: frames only, the model's process encodes them
                prepared, frames = None, extract_frames(local, ctx.image_size, ctx.score_settings.detection)
            else:
                prepared, frames = prepare(cached_model(ctx.model), local, ctx.score_settings), None
            analysis = (prepared or frames).analysis
            info = analysis.info
            repo.record_probe(session, video, duration=info.duration, width=info.width, height=info.height,
                              fps=analysis.fps, rotation=info.rotation, audio_streams=info.audio_streams,
                              shots=analysis.shots)
            deliverable(video, info.codec)
        except Exception as e:
            shutil.rmtree(work, ignore_errors=True)
            return as_state(fail(session, ctx, owner, video, job, stage, e, started))
        return ClaimedVideo(video_id, job.id, owner, video.key, video.source_uri, work, prepared, frames, started)


class Interrupted(Exception):
    pass


@task(cache_policy=NO_CACHE)
def compose_music(composer: Composer, joining: list[ClaimedVideo], composing: dict[int, ClaimedVideo],
                  ctx: RunContext, room: Callable[[], bool]) -> list:
    """The videos `joining` join those `composing` in the model's batches (`composer`, which lives as
    long as the run, and `composing`, the same videos by job id, kept in step with it here); stages
    run, one `gpu` slot each, until a video is complete, or until `room()` says that a prepared video
    waits for a place left free.

    Returns per video completed its (job id, track), per video failed its failure row. A stage that
    fails (out of memory, say) is run again video by video, so one video cannot fail its batch-mates;
    nor can its codec decode. (The flow keeps the leases.)
    """
    model = cached_model(ctx.model)
    results: list = []
    for c in joining:  # frames from media workers: CLIP runs here, on the model's device
        if c.prepared is None:
            try:
                c.prepared, c.frames = encode(model, c.frames, ctx.score_settings), None
            except Exception as e:
                results.append(_compose_failure(c, ctx, e, "prepare"))
                continue
        composer.add(c.job_id, c.prepared.tokens)
        composing[c.job_id] = c

    def between_passes(_frames: int) -> None:
        if interrupted():
            raise Interrupted("the run was interrupted")

    def stage(keys: list[int] | None = None) -> list:
        with gpu_slot():
            return composer.stage(keys, between_passes)

    def fail_composing(key: int, error: Exception) -> None:
        composer.videos.pop(key, None)
        results.append(_compose_failure(composing.pop(key), ctx, error))

    done: list = []   # (job id, Composing) of the videos whose windows are all sampled
    while composer.videos and not done:
        try:
            done = stage()
        except Exception as e:  # the stage changed nothing (see Composer.stage): each video alone, once
            retry_alone = len(composer.videos) > 1 and not isinstance(e, Interrupted)
            for key in list(composer.videos):
                if interrupted():
                    fail_composing(key, Interrupted("the run was interrupted"))
                elif not retry_alone:
                    fail_composing(key, e)
                else:
                    try:
                        done += stage([key])
                    except Exception as alone:
                        fail_composing(key, alone)
        if room():
            break
    if done:
        with gpu_slot():  # the codec, on the model's device; one video's failure is its own
            for key, composed in done:
                try:
                    track = composer.generator.track(composed)
                except Exception as e:
                    fail_composing(key, e)
                    continue
                composing.pop(key)
                results.append((key, track))
    failures = [r["cause"] for r in results if isinstance(r, dict)]
    return Failed(message="; ".join(failures), data=results) if failures else results


def _compose_failure(claimed: ClaimedVideo, ctx: RunContext, error: Exception, stage: str = "compose") -> dict:
    with sessions() as session:
        return fail(session, ctx, claimed.owner, session.get(Video, claimed.video_id), session.get(Job, claimed.job_id), stage,
                    error, claimed.started, claimed)


@task(cache_policy=NO_CACHE)
def finish_video(claimed: ClaimedVideo, track, ctx: RunContext):
    """Normalise, mux, draw the report, upload all three beside each other, record, release."""
    settings = ctx.score_settings
    with sessions() as session:
        video, job = session.get(Video, claimed.video_id), session.get(Job, claimed.job_id)
        stage = "finish"
        try:
            out_key = PurePosixPath(claimed.key)
            # named by the video's suffix only: a key may be longer than a file name can be
            done = finish(claimed.prepared, track, ctx.sample_rate, claimed.work / "out" / f"video{out_key.suffix}",
                          settings, title=out_key.name)
            if not repo.renew(session, job, claimed.owner, ctx.lease_s):  # our lease ran out and another worker has it
                shutil.rmtree(claimed.work, ignore_errors=True)
                return as_state(result_row(claimed.key, "elsewhere", claimed.started, claimed, cause="lease lost"))
            stage = "upload"
            out = open_store(ctx.output)
            repo.set_destination(session, job, out.uri(str(out_key)))
            # The track and report are recorded as gvmgen's as soon as they are written; the video, written
            # last (its presence means "scored"), with the output (a crash before: its job's destination).
            track_uri, report_uri = (delivered_file(session, out, job, file, str(out_key.with_suffix(suffix)))
                                     for file, suffix in ((done.track, done.track.suffix), (done.report, ".report.png")))
            video_uri = out.upload(done.video, str(out_key))
            found = out.info(str(out_key))
            delivered = [(video_uri, found, out.digest(found))]
        except Exception as e:
            return as_state(fail(session, ctx, claimed.owner, video, job, stage, e, claimed.started, claimed))
        recorded = repo.complete(session, job, claimed.owner, video, session.get(ModelVersion, ctx.model_version_id),
                                 session.get(Run, ctx.run_id), ctx.settings, video_uri=video_uri, track_uri=track_uri,
                                 report_uri=report_uri, delivered=delivered,
                                 loudness_lufs=done.loudness.output_lufs, true_peak_dbtp=done.loudness.true_peak_dbtp,
                                 seed=settings.generation.seed,
                                 windows=[[round(a, 3), round(b, 3)] for a, b in claimed.prepared.windows])
    shutil.rmtree(claimed.work, ignore_errors=True)
    if recorded is None:  # the lease went back (the run interrupted: the next run records it) or ran out
        return as_state(result_row(claimed.key, "pending", claimed.started, claimed, cause="the run was interrupted")
                        if interrupted() else result_row(claimed.key, "elsewhere", claimed.started, claimed,
                                                         cause="lease lost"))
    return result_row(claimed.key, "scored", claimed.started, claimed, done.loudness.output_lufs,
                      note=done.loudness.miss(settings.target_lufs))


def delivered_file(session, out: Store, job: Job | Output, file: Path, name: str) -> str:
    """Upload `file` to `name` in `out` and record it as a delivery of `job`; returns its URI."""
    uri = out.upload(file, name)
    found = out.info(name)
    repo.record_delivery(session, uri, job, found, out.digest(found))
    return uri


@task(**RETRY)
def duplicates_settled(ctx: RunContext, rows: list[dict]) -> dict[str, dict]:
    """Where the videos that were not this run's to score stand once composing is over, when that differs
    from their rows: one leased by another worker and done by now (another Dask worker of this very run,
    say, scoring the same content under another key) gets its copy; a duplicate of a video this run took
    (skipped, to get its copy) whose content failed is failed with its cause, and one whose content was
    left unscored (its key's file was not gvmgen's) is pending. Their new rows, by key."""
    waiting = [r for r in rows if r["status"] in ("elsewhere", "skipped")]
    settled = {}
    with sessions() as session:
        run, model_row = session.get(Run, ctx.run_id), session.get(ModelVersion, ctx.model_version_id)
        key = repo.settings_hash(ctx.settings)
        for row in waiting:
            video = repo.video_by_key(session, run.catalog_id, row["video"])
            job = repo.job_of(session, video, model_row, key)
            status = job.status if job is not None else "pending"
            if row["status"] == "elsewhere" and status == "done":
                settled[row["video"]] = result_row(row["video"], "skipped")
            elif row["status"] == "skipped" and status == "failed":
                error = repo.content_error(session, video.content_hash)
                settled[row["video"]] = result_row(row["video"], "failed",
                                                   cause=repo.cause_for(video, error) if error else "failed")
            elif row["status"] == "skipped" and status == "pending":
                settled[row["video"]] = result_row(row["video"], "pending", cause=(
                    "left for the next run: the same content under another key was not scored"))
    return settled


@task(**RETRY)
def copy_duplicates(ctx: RunContext, keys: list[str]) -> tuple[list[str], dict[str, str]]:
    """Skipped videos whose scored copy is not whole in this run's output (the same file twice in a
    library, a catalog scored before into another output, a source replaced by a copy of another scored
    file, a track deleted) get the recorded output's missing files under their own key: every video has
    its scored copy, and the work is done once. A file there that gvmgen did not write is left alone
    unless --overwrite. Returns the keys copied, and the keys refused with the cause."""
    copied, refused = [], {}
    out = open_store(ctx.output)
    with sessions() as session, tempfile.TemporaryDirectory(dir=scratch()) as work:
        run, model_row = session.get(Run, ctx.run_id), session.get(ModelVersion, ctx.model_version_id)
        for key in keys:
            video = repo.video_by_key(session, run.catalog_id, key)
            output = repo.done(session, video, model_row, repo.settings_hash(ctx.settings))
            if output is None:
                continue
            view, files = Outputs(session, out), scored_files(key, output)
            missing = [(source, name) for source, name in files if not view.held(name, output)]
            taken = None if ctx.overwrite or not missing else view.foreign([name for _, name in missing], key)
            if taken:
                refused[key] = f"{taken} exists and gvmgen did not write it (--overwrite replaces it)"
                repo.record_error(session, video, run, "output", refused[key])
                continue
            for source, name in missing:
                store, file = locate(source)
                if source == out.uri(name) or not store.exists(file):  # lost since prepare_video looked
                    get_run_logger().warning(f"{key}: {source} is gone; the next run scores the video again")
                    continue
                delivered_file(session, out, output, fetch_copy(store, file, Path(work) / local_name(source)), name)
                if key not in copied:
                    copied.append(key)
            if key in copied:
                repo.probe_from(session, video, session.get(Video, output.video_id))
    return copied, refused


COUNTED = {"scored": "scored", "skipped": "skipped", "copied": "skipped", "failed": "failed",
           "failed earlier": "failed_earlier", "pending": "pending", "elsewhere": "pending"}


def status_counts(rows: list[dict]) -> dict[str, int]:
    """scored / skipped (done before; a copied duplicate too) / failed / failed_earlier (not retried) /
    pending (left for the next run, or being scored by another worker)."""
    statuses = [COUNTED[r["status"]] for r in rows]
    return {s: statuses.count(s) for s in ("scored", "skipped", "failed", "failed_earlier", "pending")}


@task(**RETRY)
def close_run(run_id: int, owners: list[str], rows: list[dict], status: str, cause: str | None = None) -> None:
    """Hand back any lease the run's processes still hold (an interruption, an infrastructure stop) and
    finish the run's row with its counts and status. Scored: the outputs it recorded, which its rows
    miss for a video finished as an interruption landed."""
    counts = status_counts(rows)
    with sessions() as session:
        for owner in owners:
            repo.release_owner(session, owner)
        repo.finish_run(session, session.get(Run, run_id), status, repo.outputs_recorded(session, run_id),
                        counts["skipped"], counts["failed"], counts["failed_earlier"], cause,
                        copied=sum(r["status"] == "copied" for r in rows))


@contextlib.contextmanager
def leases_kept(owners: list[str], lease_s: float):
    """While the block runs, renew every lease held by `owners` (the run's processes; the list may grow)
    every quarter lease, from a thread of its own: a video prepared and waiting for the model, or one
    being composed, can wait longer than a lease, and must not be taken by another worker meanwhile."""
    stop, logger = threading.Event(), get_run_logger()   # the flow's logger: this thread has no run context

    def keep() -> None:
        while not stop.wait(lease_s / 4):
            try:
                with sessions() as session:
                    for owner in list(owners):
                        repo.renew_owner(session, owner, lease_s)
            except Exception as e:  # the database away for a moment: the next quarter lease tries again
                logger.warning("could not renew the run's leases: %s", e)

    keeper = threading.Thread(target=keep, name="lease-keeper", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()


# ---- the flow ------------------------------------------------------------------------------------------
def _finished(future: PrefectFuture) -> bool:
    """Whether the runner's own future (a thread's or a Dask worker's) is done: the API's task state can
    lag it, and Prefect's as_completed times out with SIGALRM, which may fire inside whatever runs meanwhile."""
    return future.wrapped_future.done()


def _ready(futures: list[PrefectFuture], most: int) -> list[PrefectFuture]:
    """Wait for one future to finish, then take up to `most` of those finished by now."""
    first = next(as_completed(futures))
    others = [f for f in futures if f is not first and _finished(f)]
    return [first, *others[:most - 1]]


def _outcome(future_or_state, key: str) -> object:
    """What a task gave back, whatever its state: its data, or a pending row for an exception that
    escaped it (a task that crashed is the infrastructure's fault, never the video's)."""
    value = future_or_state.result(raise_on_failure=False)  # a state's own data, or a future's in memory
    if isinstance(value, BaseException):
        return result_row(key, "pending", cause=f"infrastructure: {describe(value, key)}")
    return value


@flow(name="score-catalog", task_runner=ThreadPoolTaskRunner(max_workers=MEDIA_THREADS))
def score_catalog(source: str, output: str, model: str = "tiny", settings: dict | None = None,
                  catalog_name: str | None = None, retry_failed: bool = False, overwrite: bool = False,
                  lease_s: float = 900, batch_videos: int = 4, gpu_slots: int = 1) -> dict:
    """Score the videos of `source` (a folder, one video, or s3://bucket/prefix) into `output`.

    `settings`: gvmgen.settings.ScoreSettings as a mapping (its to_dict(); keys left out take their
    defaults), e.g. {"target_lufs": -23, "generation": {"seed": 7}}. The run records it whole, and a
    video is scored again when any of it changes. `output` may lie inside the library (it is left out
    of the listing) but may not be the library. `overwrite`: replace files in `output` that no run
    wrote (else such a video fails with the file named).
    `batch_videos`: at most this many videos compose together, their windows in the model's batches
    (and twice as many are prepared ahead). `lease_s`: how long a worker's claim on a video lasts; a
    crashed worker's videos are taken again once it runs out. `gpu_slots`: the size of the `gpu` limit
    when it is first made.
    Returns the counts; raises VideosFailed (the flow run ends Failed) when some video stands failed,
    and another exception when the infrastructure stopped the run.
    """
    stacks_on_sigusr1()
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
    source, output = canonical(source), canonical(output)
    settings = preflight(source, output, model, settings, batch_videos, lease_s).to_dict()
    interrupt(False)

    catalog_name = catalog_name or source
    objects = list_library(source, output)
    if not objects:   # a mistyped prefix must not pass for a catalog with nothing new, night after night
        get_run_logger().warning(f"{source}: no videos there ({', '.join(VIDEO_EXTENSIONS)})")
    video_ids = register_videos(source, catalog_name, objects)
    parameters = {"source": source, "output": output, "model": model, "settings": settings, "lease_s": lease_s,
                  "batch_videos": batch_videos}
    owner = worker_id()
    run_id, model_version_id = open_run(source, output, catalog_name, model, settings, parameters, len(video_ids),
                                        owner)
    rows: list[dict] = []
    stopped_by: list[str] = []   # the infrastructure failure that stopped the run, if one did
    owners = [owner]             # the processes holding leases for the run (Dask workers prepare apart)

    in_output: set[str] = set()   # skipped videos whose scored copy this run's output already holds

    def handled(*new_rows: dict) -> None:
        for row in new_rows:
            if row.pop("in_output", False):
                in_output.add(row["video"])
            rows.append(row)
            if row["status"] == "pending" and not stopped_by:
                stopped_by.append(row["cause"])
        update_progress_artifact(progress, 100.0 * len(rows) / max(1, len(video_ids)))
        with sessions() as session:
            repo.count_handled(session, run_id, [row["status"] for row in new_rows])

    video_of: dict[PrefectFuture, str] = {}  # future -> the key of the video it works on, named for a crash
    key_of = dict(zip(video_ids, (o.key for o in objects)))

    def submit_prepare(video_ids_: list[int]) -> list[PrefectFuture]:
        submitted = [prepare_video.submit(v, ctx) for v in video_ids_]
        video_of.update((f, key_of[v]) for f, v in zip(submitted, video_ids_))
        return submitted

    try:  # from here on the run is closed however it ends
        ensure_gpu_limit(gpu_slots)
        config = cached_model(model).config
        media_elsewhere = not isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner)  # Dask, say
        ctx = RunContext(run_id, model_version_id, source, output, model, settings, retry_failed, overwrite, lease_s,
                         owner, config.sample_rate, config.image_size if media_elsewhere else None)
        progress = create_progress_artifact(0.0, key="score-catalog-progress", description="videos handled")
        settled = settled_videos(ctx, video_ids)  # done, or failed earlier: no task run each
        clashes = name_clashes([key_of[v] for v in sorted(video_ids)])
        if clashes:
            by_key = {key: v for v, key in key_of.items()}
            settled.update(refuse_clashes(ctx, {by_key[key]: other for key, other in clashes.items()}))
        if settled:
            handled(*settled.values())
        with leases_kept(owners, lease_s), graphs_captured_meanwhile(ctx, batch_videos):
            waiting, preparing, finishing = (v for v in video_ids if v not in settled), [], []
            preparing += submit_prepare(list(islice(waiting, 2 * batch_videos)))
            # The model composes up to batch_videos videos at once, window by window; a prepared video
            # takes the place of one that is done at the next window, not when its whole batch is done.
            composer = Composer(MusicGenerator(cached_model(ctx.model), ctx.score_settings.generation))
            composing: dict[int, ClaimedVideo] = {}   # job id -> a video in the composer

            def room() -> bool:  # a prepared video waits for a place in the model's batch
                return len(composing) < batch_videos and any(map(_finished, preparing))

            while preparing or composing:
                free = batch_videos - len(composing)
                if composing:  # the model is busy: take what is ready, for the places left
                    ready = [f for f in preparing if _finished(f)][:free]
                else:
                    ready = _ready(preparing, free)
                preparing = [f for f in preparing if f not in ready]
                if not stopped_by:
                    preparing += submit_prepare(list(islice(waiting, len(ready))))
                claimed = []
                for result in (_outcome(f, video_of[f]) for f in ready):
                    if isinstance(result, ClaimedVideo):
                        claimed.append(result)
                        if result.owner not in owners:
                            owners.append(result.owner)
                    else:
                        handled(result)
                if claimed and stopped_by:  # not composed: close_run hands their leases back
                    for c in claimed:
                        shutil.rmtree(c.work, ignore_errors=True)
                        handled(result_row(c.key, "pending", c.started, c, cause="the run stopped first"))
                    claimed = []
                if claimed or composing:
                    joined = {**composing, **{c.job_id: c for c in claimed}}
                    results = _outcome(compose_music(quote(composer), claimed, quote(composing), ctx, quote(room),
                                                     return_state=True), "compose")
                    if isinstance(results, dict):  # the task itself crashed: every video in it is left pending
                        results = [{**results, "video": c.key} for c in joined.values()]
                        composer.videos.clear()
                        composing.clear()
                    for result in results:
                        if isinstance(result, dict):
                            handled(result)
                        else:
                            job_id, track = result
                            finishing.append(finish_video.submit(joined[job_id], track, ctx))
                            video_of[finishing[-1]] = joined[job_id].key
                for f in [f for f in finishing if f.state.is_final()]:
                    handled(_outcome(f, video_of[f]))
                    finishing.remove(f)
            for f in as_completed(finishing):
                handled(_outcome(f, video_of[f]))
        if not stopped_by:
            settled_now = duplicates_settled(ctx, [r for r in rows if r["video"] not in in_output])
            for row in rows:
                row.update(settled_now.get(row["video"], {}))
            copied, refused = copy_duplicates(ctx, [r["video"] for r in rows
                                                    if r["status"] == "skipped" and r["video"] not in in_output])
    except BaseException as e:  # SIGTERM (Prefect's TerminationSignal), Ctrl-C, a crash: hand everything back
        interrupt()
        signalled = isinstance(e, (KeyboardInterrupt, TerminationSignal))
        try:
            close_run.fn(run_id, owners, rows, "interrupted" if signalled else "failed",
                         f"interrupted ({interruption(e)})" if signalled else describe(e, source))
        except Exception:  # the database is gone too: the leases run out on their own
            pass
        raise

    if stopped_by:
        close_run(run_id, owners, rows, "failed", stopped_by[0])
        left = sum(COUNTED[r["status"]] == "pending" for r in rows) + (len(video_ids) - len(rows))
        _publish(run_id, rows)
        raise InfrastructureError(f"{stopped_by[0]}; the run stopped, {left} video(s) left pending for the next run")

    for row in rows:
        if row["video"] in copied:
            row["status"] = "copied"
        elif row["video"] in refused:
            row.update(status="failed", cause=refused[row["video"]])
    counts = status_counts(rows)
    failed = counts["failed"] + counts["failed_earlier"]
    close_run(run_id, owners, rows, "failed" if failed else "completed")
    _publish(run_id, rows)
    ordered = sorted(rows, key=lambda r: r["video"])
    summary = {"run": run_id, "videos": len(video_ids), **counts,
               "copied": sum(r["status"] == "copied" for r in rows),  # of the skipped
               "failures": [{"video": r["video"], "status": r["status"], "cause": r["cause"]}
                            for r in ordered if r["status"] in ("failed", "failed earlier")],
               "notes": [{"video": r["video"], "note": r["note"]} for r in ordered if r.get("note")]}
    if failed:
        message = f"{failed} of {len(video_ids)} videos failed (see the failures artifact)"
        return Failed(message=message, data=VideosFailed(message, summary))
    return summary


def interruption(e: BaseException) -> str:
    """What interrupted the run: Prefect's SIGTERM names its signal, the command line's KeyboardInterrupt
    names the one it turned into it (SIGTERM, SIGHUP); a bare one is a Ctrl-C."""
    if isinstance(e, TerminationSignal):
        return signal.Signals(e.signal).name
    return str(e) or "Ctrl-C"


def _publish(run_id: int, rows: list[dict]) -> None:
    """The results table, and the failed videos with their causes, as artifacts of the flow run."""
    counts = status_counts(rows)
    create_table_artifact(sorted(rows, key=lambda r: r["video"]), key="score-catalog-results",
                          description=f"run {run_id}: {counts}")
    failures = [r for r in sorted(rows, key=lambda r: r["video"]) if r["status"] in ("failed", "failed earlier", "pending")]
    if failures:
        titles = {"failed": "Failed in this run", "failed earlier": "Failed earlier, not retried (--retry-failed)",
                  "pending": "Left pending for the next run (infrastructure)"}
        sections = [f"### {title}\n\n" + "\n".join(f"- `{r['video']}`: {r['cause']}" for r in failures
                                                  if r["status"] == status)
                    for status, title in titles.items() if any(r["status"] == status for r in failures)]
        create_markdown_artifact("## Videos without output\n\n" + "\n\n".join(sections), key="score-catalog-failures")


NIGHTLY_RETRIES = 2          # runs again after an infrastructure fault, the nightly flow's
NIGHTLY_RETRY_DELAY_S = 600


@flow(name="score-catalog-nightly")
@functools.wraps(score_catalog.fn, assigned=())   # score-catalog's parameters (the deployment fills them in)
def nightly_score_catalog(*args, **kwargs):
    """The deployment's flow: `score-catalog` as a run of its own, run again up to NIGHTLY_RETRIES times,
    NIGHTLY_RETRY_DELAY_S apart, after a fault of the infrastructure (the store, the database, the
    machine), never after failed videos or a usage error (NOT_RETRIED): those would fail the same way
    again (Prefect's flow retries would rerun the catalog for either). It ends as its last run ended."""
    for attempt in range(NIGHTLY_RETRIES + 1):
        state = score_catalog(*args, **kwargs, return_state=True)
        error = state.result(raise_on_failure=False) if state.is_failed() else None
        if not isinstance(error, Exception) or isinstance(error, (VideosFailed, *NOT_RETRIED)) or attempt == NIGHTLY_RETRIES:
            return state
        get_run_logger().warning(f"the run failed ({describe(error, '')}); "
                                 f"running it again in {NIGHTLY_RETRY_DELAY_S:g} s "
                                 f"(retry {attempt + 1} of {NIGHTLY_RETRIES})")
        time.sleep(NIGHTLY_RETRY_DELAY_S)
