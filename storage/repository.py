"""Data access for the flows and the CLI: one function for each thing they record or ask."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import (Catalog, Delivery, Evaluation, Job, ModelVersion, Output, Run, Shot, TrainingClip, TrainingMetric,
                     Video, VideoError)
from .objects import ObjectInfo, canonical, open_store


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive, always UTC


def settings_hash(settings: dict) -> str:
    """What makes two results interchangeable: the settings (ScoreSettings.to_dict(), plain JSON),
    canonically hashed."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def catalog(session: Session, name: str, source_uri: str) -> Catalog:
    """The catalog named `name`, made on first use. A catalog recorded before runs made their libraries
    absolute (named `lib` for what is now /data/lib) is taken over rather than doubled."""
    found = session.scalar(select(Catalog).where(Catalog.name == name))
    if found is None:
        found = next((c for c in session.scalars(select(Catalog).order_by(Catalog.id))
                      if canonical(c.name) == name and canonical(c.source_uri) == canonical(source_uri)), None)
        if found is None:
            found = Catalog(name=name, source_uri=source_uri, created_at=utcnow())
            session.add(found)
        found.name, found.source_uri = name, source_uri
        session.commit()
    return found


def model_version(session: Session, name: str, checkpoint_uri: str) -> ModelVersion:
    """The version named `name`, registered with `checkpoint_uri` if new (see registry.version_for)."""
    found = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if found is None:
        found = ModelVersion(name=name, checkpoint_uri=checkpoint_uri, metrics={}, created_at=utcnow())
        session.add(found)
        session.commit()
    return found


def _naive_utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment else None


def catalog_videos(session: Session, cat: Catalog) -> dict[str, Video]:
    """The catalog's videos by key, in one query."""
    return {v.key: v for v in session.scalars(select(Video).where(Video.catalog_id == cat.id))}


def _same_object(size: int | None, etag: str | None, modified: datetime | None, obj: ObjectInfo) -> bool:
    """Whether a listing's `obj` is the object recorded with this size and ETag (S3) or modification
    time (a local file): make's and rsync's rule, `touch` a file to make it another."""
    return size == obj.size and (etag == obj.etag if obj.etag else modified == _naive_utc(obj.modified))


def unchanged_hash(video: Video | None, obj: ObjectInfo) -> str | None:
    """The content hash recorded for a local file that is still the one recorded, so that a nightly run
    does not read a whole library again. Never a stand-in hash (an unreadable file's): that one is made again."""
    if (video is not None and video.content_hash.startswith("sha256:") and video.modified_at is not None
            and _same_object(video.size, None, video.modified_at, obj)):
        return video.content_hash
    return None


def register_video(session: Session, cat: Catalog, obj: ObjectInfo, uri: str, content_hash: str) -> tuple[Video, bool]:
    """Insert a new video or refresh a changed one; returns (video, whether it is new or changed)."""
    video = session.scalar(select(Video).where(Video.catalog_id == cat.id, Video.key == obj.key))
    modified = _naive_utc(obj.modified)
    if video is not None and video.removed_at is not None:  # back in the library
        video.removed_at = None
        session.commit()
    if video is None:
        video = Video(catalog_id=cat.id, key=obj.key, source_uri=uri, content_hash=content_hash,
                      size=obj.size, modified_at=modified)
        session.add(video)
        session.commit()
        return video, True
    changed = video.content_hash != content_hash
    if changed:
        video.probed_at = None
    if changed or (video.size, video.modified_at) != (obj.size, modified):  # touched alone: not read again until touched again
        video.content_hash, video.size, video.modified_at = content_hash, obj.size, modified
        session.commit()
    return video, changed


def mark_removed(session: Session, known: list[Video], listed: set[str]) -> int:
    """Of a catalog's videos (`known`, as `catalog_videos` gave them), those missing from its library's
    listing (`listed`: the keys found) are marked removed, from now; they keep their record and outputs.
    Returns how many were newly marked."""
    gone = [v for v in known if v.key not in listed and v.removed_at is None]
    for video in gone:
        video.removed_at = utcnow()
    session.commit()
    return len(gone)


def video_by_key(session: Session, catalog_id: int, key: str) -> Video:
    return session.scalar(select(Video).where(Video.catalog_id == catalog_id, Video.key == key))


def record_probe(session: Session, video: Video, *, duration: float, width: int, height: int, fps: float,
                 rotation: int, audio_streams: int, shots: list[tuple[float, float]]) -> None:
    video.duration, video.width, video.height, video.fps = duration, width, height, fps
    video.rotation, video.audio_streams, video.probed_at = rotation, audio_streams, utcnow()
    session.query(Shot).filter(Shot.video_id == video.id, Shot.content_hash == video.content_hash).delete()
    session.add_all(Shot(video_id=video.id, content_hash=video.content_hash, index=i, start=a, end=b)
                    for i, (a, b) in enumerate(shots))
    session.commit()


def probe_from(session: Session, video: Video, original: Video) -> None:
    """A copy of a file scored under another key gets that video's probe facts and shots (the same
    content), where it has none of its own."""
    if video.probed_at is None and original.probed_at is not None and original.content_hash == video.content_hash:
        record_probe(session, video, duration=original.duration, width=original.width, height=original.height,
                     fps=original.fps, rotation=original.rotation, audio_streams=original.audio_streams,
                     shots=[(s.start, s.end) for s in shots_of(session, original)])


def start_run(session: Session, cat: Catalog, model: ModelVersion, settings: dict, parameters: dict,
              flow_run_id: str | None = None, videos: int | None = None, worker: str | None = None) -> Run:
    """A new run; or, when Prefect retries a flow run (its own retries, or Retry in the UI), the row of
    that flow run again, its counts started afresh: one flow run, one row."""
    run = session.scalar(select(Run).where(Run.flow_run_id == flow_run_id)) if flow_run_id else None
    if run is None:
        run = Run(catalog_id=cat.id, flow_run_id=flow_run_id)
        session.add(run)
    run.model_version_id, run.settings_hash, run.parameters = model.id, settings_hash(settings), parameters
    run.status, run.started_at, run.finished_at, run.videos, run.worker, run.cause = \
        "running", utcnow(), None, videos, worker, None
    run.scored = run.skipped = run.failed = run.failed_earlier = run.copied = 0
    session.commit()
    return run


def finish_run(session: Session, run: Run, status: str, scored: int, skipped: int, failed: int,
               failed_earlier: int = 0, cause: str | None = None, copied: int = 0) -> None:
    """The run's end and its counts; `copied`: how many of the `skipped` got a copy of the output of the
    same content under another key."""
    run.status, run.finished_at, run.cause = status, utcnow(), cause
    run.scored, run.skipped, run.failed, run.failed_earlier, run.copied = scored, skipped, failed, failed_earlier, copied
    session.commit()


def outputs_recorded(session: Session, run_id: int) -> int:
    """The videos a run has scored, as recorded: each output in the same transaction as its job's end."""
    return session.scalar(select(func.count()).select_from(Output).where(Output.run_id == run_id))


def count_handled(session: Session, run_id: int, statuses: list[str]) -> None:
    """Count more videos of a running run as scored, skipped or failed (what progress bars read); one
    left pending (infrastructure) or leased elsewhere is not handled by this run."""
    columns = {"scored": Run.scored, "skipped": Run.skipped, "failed": Run.failed, "failed earlier": Run.failed_earlier}
    counted = {columns[s]: statuses.count(s) for s in set(statuses) if s in columns}
    if counted:
        session.execute(update(Run).where(Run.id == run_id).values({c: c + n for c, n in counted.items()}))
        session.commit()


def _job(session: Session, video: Video, model_id: int, key: str) -> Job:
    where = (Job.content_hash == video.content_hash, Job.model_version_id == model_id, Job.settings_hash == key)
    job = session.scalar(select(Job).where(*where))
    if job is None:
        try:
            with session.begin_nested():
                session.add(Job(video_id=video.id, content_hash=video.content_hash, model_version_id=model_id,
                                settings_hash=key, status="pending"))
        except IntegrityError:  # another worker inserted it first: the unique key holds
            pass
        session.commit()
        job = session.scalar(select(Job).where(*where))
    return job


def claim(session: Session, video: Video, model: ModelVersion, key: str, owner: str, lease_s: float = 900,
          retry_failed: bool = False) -> Job | None:
    """Take the lease on scoring `video` with `model` and settings `key`, or None if it is done, or
    failed (unless retry_failed), or leased by a worker whose lease has not expired.

    One UPDATE with the conditions in its WHERE clause: atomic on SQLite and PostgreSQL alike, so of
    two workers racing for a video exactly one gets it.
    """
    job = _job(session, video, model.id, key)
    now = utcnow()
    statuses = ("pending", "failed") if retry_failed else ("pending",)
    taken = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_(statuses), or_(Job.owner.is_(None), Job.lease_expires_at < now))
        .values(owner=owner, lease_expires_at=now + timedelta(seconds=lease_s),
                attempts=case((Job.status == "failed", 1), else_=Job.attempts + 1),  # a retried failure starts afresh
                status="pending", video_id=video.id)
    ).rowcount
    session.commit()
    if not taken:
        return None
    session.refresh(job)
    return job


def settled(session: Session, catalog_id: int, model_id: int, key: str,
            statuses: tuple[str, ...]) -> list[tuple[Video, str, Output | None]]:
    """The catalog's videos whose job for this model and settings has one of `statuses` (done,
    failed), each with that status and the job's output: one query for a whole catalog."""
    same_job = (Job.content_hash == Video.content_hash) & (Job.model_version_id == model_id) & (Job.settings_hash == key)
    its_output = (Output.content_hash == Job.content_hash) & (Output.model_version_id == model_id) \
        & (Output.settings_hash == key)
    return list(session.execute(select(Video, Job.status, Output).join(Job, same_job).outerjoin(Output, its_output)
                                .where(Video.catalog_id == catalog_id, Job.status.in_(statuses))).tuples())


def job_of(session: Session, video: Video, model: ModelVersion, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.content_hash == video.content_hash, Job.model_version_id == model.id,
                                            Job.settings_hash == key))


def release_owner(session: Session, owner: str, job: Job | None = None) -> int:
    """Every lease `owner` still holds (or just that of `job`) back to pending, the attempt not counted
    (an interrupted run: the next run takes its videos at once instead of after the lease). Returns how many."""
    which = [Job.owner == owner, Job.status == "pending", *([Job.id == job.id] if job else [])]
    released = session.execute(update(Job).where(*which)
                               .values(owner=None, lease_expires_at=None,
                                       attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0))).rowcount
    session.commit()
    return released


def renew(session: Session, job: Job, owner: str, lease_s: float = 900) -> bool:
    """Extend a lease we still hold (long videos); False if it expired and someone else took it."""
    ok = session.execute(update(Job).where(Job.id == job.id, Job.owner == owner)
                         .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))).rowcount
    session.commit()
    return bool(ok)


def renew_owner(session: Session, owner: str, lease_s: float) -> int:
    """Extend every lease `owner` holds (a run keeping its waiting videos); returns how many."""
    renewed = session.execute(update(Job).where(Job.owner == owner, Job.status == "pending")
                              .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))).rowcount
    session.commit()
    return renewed


def release(session: Session, job: Job, owner: str, status: str) -> None:
    """End our lease: status 'done', 'failed', or 'pending' (to be taken again)."""
    session.execute(update(Job).where(Job.id == job.id, Job.owner == owner)
                    .values(owner=None, lease_expires_at=None, status=status))
    session.commit()


def done(session: Session, video: Video, model: ModelVersion, key: str) -> Output | None:
    """The output recorded for the video's job while the job is done (not while it is scored again)."""
    same_job = (Job.content_hash == Output.content_hash) & (Job.model_version_id == Output.model_version_id) \
        & (Job.settings_hash == Output.settings_hash)
    return session.scalar(select(Output).join(Job, same_job).where(
        Output.content_hash == video.content_hash, Output.model_version_id == model.id, Output.settings_hash == key,
        Job.status == "done"))


def reopen_lost(session: Session, video: Video, model: ModelVersion, key: str, kept: Callable[[Output], bool]) -> bool:
    """A done job whose recorded scored video is gone or replaced (`kept(output)` asks its store) turns
    pending, to be scored again; its output row stays until `complete` replaces it, so nothing is lost
    if the rescore fails. Returns whether it reopened the job: of two workers finding it gone, one does,
    and none does once another has scored it anew meanwhile."""
    output = done(session, video, model, key)
    if output is None or kept(output):
        return False
    job = _job(session, video, model.id, key)
    # that very output still recorded (SQLite may give a replacing row the same id, not the same time)
    still_that_output = select(Output.id).where(Output.id == output.id, Output.created_at == output.created_at)
    reopened = session.execute(update(Job).where(Job.id == job.id, Job.status == "done", still_that_output.exists())
                               .values(status="pending", attempts=0, owner=None, lease_expires_at=None)).rowcount
    session.commit()
    return bool(reopened)


def complete(session: Session, job: Job, owner: str, video: Video, model: ModelVersion, run: Run | None,
             settings: dict, *, video_uri: str, track_uri: str, report_uri: str | None = None,
             delivered: list[tuple[str, ObjectInfo, str]] = (),
             loudness_lufs: float | None = None, true_peak_dbtp: float | None = None, seed: int | None = None,
             windows: list | None = None) -> Output | None:
    """Record the output (`delivered`: (URI, as written, digest) of each of its files) and end the job as done in one
    transaction: a worker killed in between leaves neither, and the video is simply scored again. None,
    and nothing recorded, when `owner` no longer holds the lease (it ran out, or the run was interrupted
    meanwhile)."""
    # A rescore (see reopen_lost) replaces the output recorded before, its evaluations with it.
    session.execute(delete(Output).where(Output.content_hash == video.content_hash, Output.model_version_id == model.id,
                                         Output.settings_hash == settings_hash(settings)))
    output = Output(video_id=video.id, run_id=run.id if run else None, content_hash=video.content_hash,
                    model_version_id=model.id, settings_hash=settings_hash(settings), settings=settings, seed=seed,
                    video_uri=video_uri, track_uri=track_uri, report_uri=report_uri, loudness_lufs=loudness_lufs,
                    true_peak_dbtp=true_peak_dbtp, windows=windows, worker=owner, created_at=utcnow())
    session.add(output)
    for uri, found, digest in delivered:
        _put_delivery(session, uri, job, found, digest)
    held = session.execute(update(Job).where(Job.id == job.id, Job.owner == owner)  # the delivery stands for it now
                           .values(owner=None, lease_expires_at=None, status="done", destination=None)).rowcount
    if not held:
        session.rollback()
        return None
    session.commit()
    return output


def deliveries(session: Session, output_uri: str) -> dict[str, Delivery]:
    """The deliveries recorded in one output (`output_uri`: its store's `uri("")`), by URI, in one query."""
    below = output_uri.rstrip("/") + "/"
    return {d.uri: d for d in session.scalars(select(Delivery).where(Delivery.uri.startswith(below, autoescape=True)))}


def delivery(session: Session, uri: str) -> Delivery | None:
    return session.scalar(select(Delivery).where(Delivery.uri == uri))


def holding(session: Session, here: Delivery | None, uri: str, found: ObjectInfo | None,
            digest_of: Callable[[], str], job: Job | Output | None = None) -> Delivery | None:
    """What the file `found` at `uri` (None: nothing there) is: the delivery recorded there (`here`) while
    the file is as written, or None when gvmgen did not write it. `digest_of()` reads the file's digest
    (its store's `digest`), asked only when the cheap checks cannot tell:
    - a delivery carried over from before they were recorded (no size) is taken as found;
    - a file gvmgen wrote that was copied, moved or touched since has the digest of a delivery of its
      size: it is that delivery's file, recorded here now. Where several jobs wrote the same bytes (the
      same video muxed for two track formats), `job`'s is taken first (the file is its as much as any
      other's), then the one recorded here, then the newest.
    """
    if found is None:
        return None
    if here is not None and here.size is not None and _same_object(here.size, here.etag, here.modified_at, found):
        return here
    by_etag = f"etag:{found.etag}" if found.etag else None   # S3 deliveries recorded before their SHA-256
    if here is not None and here.size is None:
        return record_delivery(session, uri, here, found, by_etag or digest_of())
    alike = session.scalars(select(Delivery).where(Delivery.size == found.size, Delivery.digest.is_not(None))
                            .order_by(Delivery.id.desc())).all()
    if not alike:
        return None
    preferred = sorted(alike, key=lambda d: (job is None or not of_job(d, job), d is not here))
    match = next((d for d in preferred if by_etag and d.digest == by_etag), None)   # no read needed
    if match:
        return record_delivery(session, uri, match, found, by_etag)
    digest = digest_of()
    match = next((d for d in preferred if d.digest == digest), None)
    return record_delivery(session, uri, match, found, digest) if match else None


def of_job(delivery: Delivery, job: Job | Output) -> bool:
    """Whether a delivery is a scored video of this job (content, model and settings), not of another."""
    return (delivery.content_hash, delivery.model_version_id, delivery.settings_hash) == \
        (job.content_hash, job.model_version_id, job.settings_hash)


def record_delivery(session: Session, uri: str, job: Job | Output | Delivery, found: ObjectInfo,
                    digest: str) -> Delivery:
    """The scored video of `job` at `uri` (written there, or found there), as `found` says it is now."""
    _put_delivery(session, uri, job, found, digest)
    session.commit()
    return delivery(session, uri)


def _put_delivery(session: Session, uri: str, job: Job | Output | Delivery, found: ObjectInfo, digest: str) -> None:
    """Insert or replace the delivery at `uri`, in the session's transaction. Two workers may record one
    URI at once (two runs copying one duplicate): the later one's record stands, never an error."""
    values = dict(content_hash=job.content_hash, model_version_id=job.model_version_id,
                  settings_hash=job.settings_hash, size=found.size, etag=found.etag,
                  modified_at=_naive_utc(found.modified), digest=digest)
    if session.execute(update(Delivery).where(Delivery.uri == uri).values(**values)).rowcount:
        return
    try:
        with session.begin_nested():
            session.add(Delivery(uri=uri, created_at=utcnow(), **values))
    except IntegrityError:  # recorded meanwhile by another worker
        session.execute(update(Delivery).where(Delivery.uri == uri).values(**values))


def destined(session: Session, uri: str) -> bool:
    """Whether a job is uploading its scored video to `uri`, or a crash cut that upload off before its
    record: the file there is gvmgen's (its track and report are recorded as they are written)."""
    return session.scalar(select(Job.id).where(Job.destination == uri).limit(1)) is not None


def set_destination(session: Session, job: Job, video_uri: str) -> None:
    """Note where the job's scored video is about to be uploaded (before the upload starts)."""
    session.execute(update(Job).where(Job.id == job.id).values(destination=video_uri))
    session.commit()


def record_error(session: Session, video: Video, run: Run | None, stage: str, cause: str) -> VideoError:
    error = VideoError(video_id=video.id, run_id=run.id if run else None, stage=stage, cause=cause, created_at=utcnow())
    session.add(error)
    session.commit()
    return error


def running(session: Session, worker: str) -> Run | None:
    """The run that process `worker` is running now, if any."""
    return session.scalar(select(Run).where(Run.worker == worker, Run.status == "running")
                          .order_by(Run.id.desc()).limit(1))


def output_locations(session: Session) -> set[str]:
    """Every output location runs have written to. Runs record them absolute; an older run's relative one
    is left out, as it says nothing of where it lies."""
    recorded = {p["output"] for p in session.scalars(select(Run.parameters)) if p and p.get("output")}
    return {canonical(o) for o in recorded if "://" in o or os.path.isabs(o)}


def model_versions(session: Session) -> list[ModelVersion]:
    """Every model that scored or was published, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())))


def runs(session: Session, limit: int = 20) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.started_at.desc(), Run.id.desc()).limit(limit)))


VIDEO_STATUSES = ("new", "pending", "done", "failed", "removed")


def find_catalog(session: Session, named: str) -> Catalog | None:
    """The catalog of this name, else of this source (a folder as given, or as runs record it)."""
    names = (named, canonical(named))
    return next(iter(session.scalars(select(Catalog).where(or_(Catalog.name.in_(names), Catalog.source_uri.in_(names)))
                                     .order_by(Catalog.name.in_(names).desc(), Catalog.id))), None)


def videos(session: Session, status: str | None = None,
           catalog: Catalog | None = None) -> list[tuple[Video, str, VideoError | None]]:
    """Every video (of one catalog, or of all) with its status as its catalog's latest run sees it, for
    that run's model and settings: 'done' while its scored copy is recorded as delivered in that run's
    output; 'failed' (its content failed, or the run refused it for what stands in the output: a file
    gvmgen did not write, another video's names); 'pending' (being scored, left for the next run, or
    scored but its copy not in that output); 'new' (never tried); 'removed' once gone from its library.
    A catalog no run scored (a fine-tuning's) shows its content's latest job. Failed ones come with
    their latest error; optionally only one status."""
    if status is not None and status not in VIDEO_STATUSES:
        raise ValueError(f"unknown video status {status!r}; choose one of {', '.join(VIDEO_STATUSES)}")
    jobs: dict[tuple[str, int, str], str] = {}      # (content, model, settings) -> status
    newest_job: dict[str, str] = {}                  # content -> its newest job's status
    for content, model_id, key, job_status in session.execute(
            select(Job.content_hash, Job.model_version_id, Job.settings_hash, Job.status).order_by(Job.id.desc())):
        jobs[content, model_id, key] = job_status
        newest_job.setdefault(content, job_status)
    latest = {run.catalog_id: run for run in session.scalars(
        select(Run).where(Run.id.in_(select(func.max(Run.id)).group_by(Run.catalog_id))))}
    refused = {error.video_id: error for error in session.scalars(
        select(VideoError).where(VideoError.stage == "output", VideoError.run_id.in_([r.id for r in latest.values()]))
        .order_by(VideoError.id))}
    outputs = {}   # run id -> (its output store, the deliveries recorded there)
    for run in latest.values():
        if (run.parameters or {}).get("output"):
            out = open_store(run.parameters["output"])
            outputs[run.id] = (out, deliveries(session, out.uri("")))

    def status_of(v: Video) -> str:
        run = latest.get(v.catalog_id)
        if v.removed_at:
            return "removed"
        if v.id in refused:
            return "failed"
        if run is None:
            return newest_job.get(v.content_hash, "new")
        job_status = jobs.get((v.content_hash, run.model_version_id, run.settings_hash), "new")
        if job_status == "done" and run.id in outputs:
            out, held = outputs[run.id]
            copy = held.get(out.uri(v.key))
            if copy is None or (copy.content_hash, copy.model_version_id, copy.settings_hash) != \
                    (v.content_hash, run.model_version_id, run.settings_hash):
                return "pending"
        return job_status

    listed = select(Video).order_by(Video.id)
    found = [(v, status_of(v)) for v in session.scalars(listed.where(Video.catalog_id == catalog.id) if catalog else listed)]
    found = [(v, s) for v, s in found if status is None or s == status]
    failed = {v.content_hash for v, s in found if s == "failed"}
    newest = (select(func.max(VideoError.id)).join(Video).where(Video.content_hash.in_(failed))
              .group_by(Video.content_hash))
    errors = {video.content_hash: error for error, video in
              session.execute(select(VideoError, Video).join(Video).where(VideoError.id.in_(newest))).tuples()}
    return [(v, s, refused.get(v.id) or errors.get(v.content_hash) if s == "failed" else None) for v, s in found]


def content_error(session: Session, content_hash: str) -> VideoError | None:
    """The latest error recorded against any video of this content."""
    return session.scalar(select(VideoError).join(Video).where(Video.content_hash == content_hash)
                          .order_by(VideoError.id.desc()).limit(1))


def failed_before(session: Session, run: Run) -> list[tuple[VideoError, Video]]:
    """The videos of a run's catalog that stand failed for its model and settings by an error of an
    earlier run (what it counted as failed earlier, not retried), each with that error; as they stand
    now: one retried and scored since is no longer listed, nor one this run failed again."""
    if not run.failed_earlier:   # none, or the run stopped before it came to them
        return []
    failed = select(Job.content_hash).where(Job.model_version_id == run.model_version_id,
                                            Job.settings_hash == run.settings_hash, Job.status == "failed")
    failed_now = select(Video.content_hash).join(VideoError).where(VideoError.run_id == run.id)
    videos = list(session.scalars(select(Video).where(Video.catalog_id == run.catalog_id, Video.removed_at.is_(None),
                                                      Video.content_hash.in_(failed),
                                                      Video.content_hash.not_in(failed_now)).order_by(Video.key)))
    latest = (select(func.max(VideoError.id)).join(Video).where(Video.content_hash.in_({v.content_hash for v in videos}),
                                                                VideoError.run_id < run.id, VideoError.stage != "output")
              .group_by(Video.content_hash))
    errors = {video.content_hash: error for error, video in
              session.execute(select(VideoError, Video).join(Video).where(VideoError.id.in_(latest))).tuples()}
    return [(errors[v.content_hash], v) for v in videos if v.content_hash in errors]


def cause_for(video: Video, error: VideoError) -> str:
    """An error's cause as said of `video`: one recorded against another video of the same content (a
    copy under another key, another catalog's) says so, for its cause names that video's file."""
    return error.cause if error.video_id == video.id else f"the same content as another file, which failed: {error.cause}"


def latest_errors(session: Session, video_ids: list[int]) -> dict[int, VideoError]:
    """The latest recorded error of each of these videos."""
    if not video_ids:
        return {}
    newest = select(func.max(VideoError.id)).where(VideoError.video_id.in_(video_ids)).group_by(VideoError.video_id)
    return {e.video_id: e for e in session.scalars(select(VideoError).where(VideoError.id.in_(newest)))}


def errors(session: Session, run: Run) -> list[tuple[VideoError, Video]]:
    """The failures of a run: each error it recorded, with its video, then the copies in its catalog of
    a video that failed in it (the same content under another key, failed with it; see `cause_for`),
    those still in the library."""
    recorded = list(session.execute(select(VideoError, Video).join(Video).where(VideoError.run_id == run.id)
                                    .order_by(VideoError.id)).tuples())
    by_content = {video.content_hash: error for error, video in recorded if error.stage != "output"}
    copies = session.scalars(select(Video).where(Video.catalog_id == run.catalog_id, Video.removed_at.is_(None),
                                                 Video.content_hash.in_(by_content),
                                                 Video.id.not_in([video.id for _, video in recorded]))
                             .order_by(Video.id)) if by_content else []
    return recorded + [(by_content[video.content_hash], video) for video in copies]


# ---- training --------------------------------------------------------------------------------------
def training_clips(session: Session, encoders: str, content_hash: str) -> list[TrainingClip]:
    return list(session.scalars(select(TrainingClip).where(TrainingClip.encoders == encoders,
                                                           TrainingClip.content_hash == content_hash)
                                .order_by(TrainingClip.index)))


def record_training_clips(session: Session, encoders: str, video: Video, music: str | None,
                          spans: list[tuple[float, float]], split: str, shard_uri: str) -> list[TrainingClip]:
    """The clips of a video's content cut with `music` (replacing those cut with other music)."""
    session.execute(delete(TrainingClip).where(TrainingClip.encoders == encoders,
                                               TrainingClip.content_hash == video.content_hash))
    rows = [TrainingClip(encoders=encoders, video_id=video.id, content_hash=video.content_hash, music=music, index=i,
                         start=a, end=b, split=split, shard_uri=shard_uri, created_at=utcnow())
            for i, (a, b) in enumerate(spans)]
    session.add_all(rows)
    session.commit()
    return rows


def training_set(session: Session, encoders: str, video_ids: list[int]) -> list[TrainingClip]:
    """The clips of these videos' content, whichever catalog they were first cut for (a copy of a
    catalog trains on the clips cached for the original)."""
    contents = select(Video.content_hash).where(Video.id.in_(video_ids))
    return list(session.scalars(select(TrainingClip).where(TrainingClip.encoders == encoders,
                                                           TrainingClip.content_hash.in_(contents))
                                .order_by(TrainingClip.content_hash, TrainingClip.index)))


def move_to_validation(session: Session, encoders: str, content_hash: str) -> None:
    session.execute(update(TrainingClip).where(TrainingClip.encoders == encoders,
                                               TrainingClip.content_hash == content_hash).values(split="validation"))
    session.commit()


def record_metric(session: Session, model_name: str, step: int, split: str, loss: float, accuracy: float,
                  lr: float | None = None, spread: float | None = None, conditioning_gain: float | None = None) -> None:
    """One point of a training curve; a resumed run writes the steps after its checkpoint again."""
    session.execute(delete(TrainingMetric).where(TrainingMetric.model_name == model_name,
                                                 TrainingMetric.step == step, TrainingMetric.split == split))
    session.add(TrainingMetric(model_name=model_name, step=step, split=split, loss=loss, accuracy=accuracy, lr=lr,
                               spread=spread, conditioning_gain=conditioning_gain, created_at=utcnow()))
    session.commit()


def training_metrics(session: Session, training: str) -> list[TrainingMetric]:
    """A training's curve (`training`: flows.finetune.training_of, `name`/digest)."""
    return list(session.scalars(select(TrainingMetric).where(TrainingMetric.model_name == training)
                                .order_by(TrainingMetric.step, TrainingMetric.split)))


def latest_training_step(session: Session, name: str, since: datetime) -> TrainingMetric | None:
    """The last training step recorded since `since` by a training of model `name`."""
    return session.scalar(select(TrainingMetric).where(TrainingMetric.model_name.startswith(f"{name}/", autoescape=True),
                                                       TrainingMetric.split == "train", TrainingMetric.created_at >= since)
                          .order_by(TrainingMetric.created_at.desc(), TrainingMetric.id.desc()).limit(1))


# ---- evaluation ------------------------------------------------------------------------------------
@dataclass
class EvaluationScope:
    """What one evaluation covers: a run's outputs, or a catalog's by one model (each video still in
    its library, by its newest output for the content it has now)."""
    run: Run | None
    catalog: Catalog | None
    model: ModelVersion
    found: list[tuple[Output, Video]]


def outputs_to_evaluate(session: Session, target: str, model: str | None = None) -> EvaluationScope:
    """`target`: a run id, or a catalog's source (or name); `model`: for a catalog, whose outputs (by
    default the model of its newest output). A catalog scored by two models is never averaged across them."""
    query = select(Output, Video).join(Video, Output.video_id == Video.id)
    if target.isdigit():
        run = session.get(Run, int(target))
        if run is None:
            raise ValueError(f"no run {target} (gvmgen runs list shows them)")
        ran = session.get(ModelVersion, run.model_version_id)
        if model is not None and model != ran.name:
            raise ValueError(f"--model {model}: run {target} scored with {ran.name}; give a catalog to choose a model")
        found = _still_delivered(session, list(session.execute(query.where(Output.run_id == run.id)
                                                               .order_by(Video.key)).all()))
        if not found:
            source = run.parameters.get("source", "SOURCE")
            raise ValueError(f"run {target} holds no output now (its videos were done before, copied or failed, or "
                             f"scored again or written over since): evaluate its catalog, gvmgen eval {source}")
        return EvaluationScope(run, None, ran, found)
    cat = find_catalog(session, target)
    if cat is None:
        raise ValueError(f"{target}: neither a run id nor a catalog that has been scored")
    # by content: a copy, or a video renamed, has its music in the output scored for that content first
    current = (select(Output, Video).join(Video, Output.content_hash == Video.content_hash)
               .where(Video.catalog_id == cat.id, Video.removed_at.is_(None)))
    if model is None:
        newest = session.execute(current.order_by(Output.created_at.desc(), Output.id.desc()).limit(1)).first()
        if newest is None:
            raise ValueError(f"{target}: no video of it has been scored")
        chosen = session.get(ModelVersion, newest[0].model_version_id)
    else:
        named = lambda name: session.scalar(select(ModelVersion).where(ModelVersion.name == name))
        chosen = named(model) or (named(str(Path(model).resolve())) if "/" in model or Path(model).is_dir() else None)
        if chosen is None:
            raise ValueError(f"--model {model}: no such model has scored anything (gvmgen models list shows them)")
    scored = list(session.execute(current.where(Output.model_version_id == chosen.id).order_by(Output.created_at, Output.id)))
    newest_per_video = {video.key: (output, video) for output, video in _still_delivered(session, scored)}
    if not newest_per_video:
        raise ValueError(f"{chosen.name}: no video {target} holds now has its music from it" + (
            " any more: later runs wrote over its tracks in the same output (score with it into another --out "
            "to compare)" if scored else ""))
    return EvaluationScope(None, cat, chosen, [newest_per_video[key] for key in sorted(newest_per_video)])


def _still_delivered(session: Session, scored: list) -> list:
    """The (output, video) pairs whose track is still the output's own: a later run into the same
    output folder (another model or settings) writes over it, and its delivery then says so. A track
    from before deliveries were recorded counts as the output's."""
    tracks = {output.track_uri for output, _ in scored}
    now = {d.uri: d for d in session.scalars(select(Delivery).where(Delivery.uri.in_(tracks)))} if tracks else {}
    return [(output, video) for output, video in scored
            if output.track_uri not in now or of_job(now[output.track_uri], output)]


def shots_of(session: Session, video: Video) -> list[Shot]:
    return list(session.scalars(select(Shot).where(Shot.video_id == video.id, Shot.content_hash == video.content_hash)
                                .order_by(Shot.index)))


def record_evaluation(session: Session, metric: str, value: float | None, *, output: Output | None = None,
                      scope: EvaluationScope | None = None, baseline: float | None = None,
                      details: dict | None = None) -> None:
    """One metric value of an output, or of a scope's outputs together; it replaces an earlier
    evaluation of the same thing."""
    whose = {"output_id": output.id if output else None,
             "run_id": scope.run.id if scope and scope.run else None,
             "catalog_id": scope.catalog.id if scope and scope.catalog else None,
             "model_version_id": scope.model.id if scope and scope.catalog else None}
    session.execute(delete(Evaluation).where(Evaluation.metric == metric, *(
        getattr(Evaluation, column) == row_id if row_id is not None else getattr(Evaluation, column).is_(None)
        for column, row_id in whose.items())))
    session.add(Evaluation(**whose, metric=metric, value=value, baseline=baseline, details=details or {},
                           created_at=utcnow()))
    session.commit()
