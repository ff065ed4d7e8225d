"""The SQL schema: catalogs, videos, shots, runs, jobs (leases), outputs, deliveries, errors, model versions.

A video's result is keyed by (content hash or ETag, model version, generation settings hash): a
catalog rerun finds it done and skips it, and a changed file (new hash) is scored again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Catalog(Base):
    __tablename__ = "catalogs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    source_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    videos: Mapped[list[Video]] = relationship(back_populates="catalog")


class Video(Base):
    __tablename__ = "videos"
    __table_args__ = (UniqueConstraint("catalog_id", "key"), Index("ix_videos_content_hash", "content_hash"))
    id: Mapped[int] = mapped_column(primary_key=True)
    catalog_id: Mapped[int] = mapped_column(ForeignKey("catalogs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(Text)                       # below the catalog's source
    source_uri: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(160))       # "sha256:..." or "etag:..."
    size: Mapped[int] = mapped_column(BigInteger)                 # bytes: masters run to tens of GB
    modified_at: Mapped[datetime | None] = mapped_column(DateTime)
    duration: Mapped[float | None] = mapped_column(Float)        # probe facts, once probed
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    fps: Mapped[float | None] = mapped_column(Float)
    rotation: Mapped[int | None] = mapped_column(Integer)
    audio_streams: Mapped[int | None] = mapped_column(Integer)
    probed_at: Mapped[datetime | None] = mapped_column(DateTime)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime)   # missing from its library's last listing
    catalog: Mapped[Catalog] = relationship(back_populates="videos")
    shots: Mapped[list[Shot]] = relationship(cascade="all, delete-orphan", order_by="Shot.index")


class Shot(Base):
    __tablename__ = "shots"
    __table_args__ = (UniqueConstraint("video_id", "content_hash", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(160))
    index: Mapped[int] = mapped_column(Integer)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    base: Mapped[str | None] = mapped_column(String(255))
    checkpoint_uri: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_catalog_started", "catalog_id", "started_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    catalog_id: Mapped[int] = mapped_column(ForeignKey("catalogs.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    settings_hash: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)
    # running; completed (every video has its output); failed (a video failed, now or earlier, or the
    # infrastructure stopped the run: see cause); interrupted (SIGTERM/SIGINT)
    status: Mapped[str] = mapped_column(String(16), default="running")
    worker: Mapped[str | None] = mapped_column(String(128))   # host:pid of the process that ran it
    cause: Mapped[str | None] = mapped_column(Text)           # why it stopped early, when it did
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    videos: Mapped[int | None] = mapped_column(Integer)   # in the library when the run began
    scored: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    failed_earlier: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # not retried
    copied: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # of the skipped: given a copy
                                                                                  # of another key's output


class Job(Base):
    """One video to score with one model and settings; its lease keeps two workers off it."""
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("content_hash", "model_version_id", "settings_hash"),
                      Index("ix_jobs_status_lease", "status", "lease_expires_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(160))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    settings_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, done, failed
    # the run's process holding the lease (host:pid), carried explicitly to every task of the run
    owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # where its scored video is being uploaded: a file there is ours even if a crash came before the record
    destination: Mapped[str | None] = mapped_column(Text)


class Output(Base):
    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("content_hash", "model_version_id", "settings_hash"),
                      Index("ix_outputs_video_uri", "video_uri"))
    id: Mapped[int] = mapped_column(primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    content_hash: Mapped[str] = mapped_column(String(160))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    settings_hash: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    seed: Mapped[int | None] = mapped_column(Integer)
    video_uri: Mapped[str] = mapped_column(Text)
    track_uri: Mapped[str] = mapped_column(Text)
    report_uri: Mapped[str | None] = mapped_column(Text)
    windows: Mapped[list | None] = mapped_column(JSON)           # [[start, end], ...] seconds, as generated
    loudness_lufs: Mapped[float | None] = mapped_column(Float)
    true_peak_dbtp: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(128))      # host:pid of the process that held the lease
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Delivery(Base):
    """A file of a scored video gvmgen put at `uri` (the video, its track or its report; a recorded
    output, or a copy of one under a duplicate's key), with what it was when written: a file found there
    since with another size, ETag (S3) or modification time (local) and another digest is not gvmgen's
    any more, and a delivery of other content is stale."""
    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_size", "size"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    uri: Mapped[str] = mapped_column(Text, unique=True)
    content_hash: Mapped[str] = mapped_column(String(160))       # the job whose scored video it is
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    settings_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)         # None: carried over from before deliveries were
    etag: Mapped[str | None] = mapped_column(String(160))        # recorded, taken as it is when next seen
    modified_at: Mapped[datetime | None] = mapped_column(DateTime)
    # the file's SHA-256 (on S3 stored with the object when gvmgen wrote it; ETag for objects written
    # before): the same file copied, moved or touched, in any store
    digest: Mapped[str | None] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class VideoError(Base):
    __tablename__ = "video_errors"
    id: Mapped[int] = mapped_column(primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    cause: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class TrainingClip(Base):
    """The manifest of a training set: one row per cached clip, which shard holds it, which split."""
    __tablename__ = "training_clips"
    __table_args__ = (UniqueConstraint("encoders", "content_hash", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    encoders: Mapped[str] = mapped_column(String(64), index=True)   # which frozen CLIP + EnCodec made it
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(160))
    music: Mapped[str | None] = mapped_column(String(160))          # the paired file it was cut with; None: its own track
    index: Mapped[int] = mapped_column(Integer)                     # the clip's place in its shard
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    split: Mapped[str] = mapped_column(String(16))                  # train, validation
    shard_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class TrainingMetric(Base):
    __tablename__ = "training_metrics"
    __table_args__ = (UniqueConstraint("model_name", "step", "split"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(255), index=True)  # the model version it is training
    step: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(16))
    loss: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    # validation only: the frame tokens' spread across frames (collapse monitor) and the conditioning gain
    spread: Mapped[float | None] = mapped_column(Float)
    conditioning_gain: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Evaluation(Base):
    """One metric of one output, or of a set of outputs: a run's (run_id), or a catalog's by one model
    (catalog_id and model_version_id)."""
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("output_id", "run_id", "metric"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    output_id: Mapped[int | None] = mapped_column(ForeignKey("outputs.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    catalog_id: Mapped[int | None] = mapped_column(ForeignKey("catalogs.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)          # None: not available (see details)
    baseline: Mapped[float | None] = mapped_column(Float)       # what chance gives, where there is one
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime)
