"""Schema, migrations, idempotency and leases against SQLite and a real PostgreSQL server."""

import multiprocessing
from datetime import datetime, timedelta, timezone

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import sessionmaker

from storage import repository as repo
from storage.db import connect, downgrade, make_engine, upgrade
from storage.models import Base, Evaluation, Job
from storage.objects import ObjectInfo

TABLES = {"catalogs", "videos", "shots", "model_versions", "runs", "jobs", "outputs", "video_errors"}


def _session(url):
    upgrade(url)
    return sessionmaker(make_engine(url), expire_on_commit=False)()


def _videos(session, n):
    cat = repo.catalog(session, "library", "file:///library")
    now = datetime.now(timezone.utc)
    return [repo.register_video(session, cat, ObjectInfo(f"v{i}.mp4", 10 + i, None, now), f"file:///library/v{i}.mp4",
                                f"sha256:{i:064d}")[0] for i in range(n)]


def test_migrations_go_up_down_and_up_again(database_url):
    upgrade(database_url)
    assert TABLES <= set(inspect(make_engine(database_url)).get_table_names())
    downgrade(database_url)
    assert not TABLES & set(inspect(make_engine(database_url)).get_table_names())
    upgrade(database_url)
    assert TABLES <= set(inspect(make_engine(database_url)).get_table_names())


def test_models_and_migrations_agree(database_url):
    upgrade(database_url)
    with make_engine(database_url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_a_fresh_embedded_database_is_created_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("GVMGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GVMGEN_DATABASE_URL", raising=False)
    with connect()() as session:
        assert repo.catalog(session, "c", "file:///c").id == 1
    assert (tmp_path / "home" / "gvmgen.db").is_file()


def test_a_changed_file_is_a_new_video_to_score(database_url):
    session = _session(database_url)
    cat = repo.catalog(session, "library", "s3://b/library")
    info = ObjectInfo("a.mp4", 5, "e1", datetime.now(timezone.utc))
    video, new = repo.register_video(session, cat, info, "s3://b/library/a.mp4", "etag:e1")
    assert new
    assert repo.register_video(session, cat, info, "s3://b/library/a.mp4", "etag:e1") == (video, False)
    again, changed = repo.register_video(session, cat, info, "s3://b/library/a.mp4", "etag:e2")
    assert changed and again.id == video.id and again.content_hash == "etag:e2"


def test_done_work_is_not_done_again(database_url):
    session = _session(database_url)
    (video,) = _videos(session, 1)
    model = repo.model_version(session, "tiny", "preset:tiny")
    settings = {"stitch": "continue", "seed": 0}
    key = repo.settings_hash(settings)
    job = repo.claim(session, video, model, key, owner="w1")
    repo.complete(session, job, "w1", video, model, None, settings, video_uri="file:///o/v0.mp4",
                  track_uri="file:///o/v0.wav")
    assert repo.done(session, video, model, key) is not None
    assert repo.claim(session, video, model, key, owner="w2") is None
    assert repo.claim(session, video, model, repo.settings_hash({**settings, "seed": 1}), owner="w2") is not None


def test_a_video_whose_scored_copy_was_deleted_is_scored_again(database_url):
    session = _session(database_url)
    (video,) = _videos(session, 1)
    model = repo.model_version(session, "tiny", "preset:tiny")
    settings = {"seed": 0}
    key = repo.settings_hash(settings)
    job = repo.claim(session, video, model, key, owner="w1")
    output = repo.complete(session, job, "w1", video, model, None, settings, video_uri="file:///o/v0.mp4",
                           track_uri="file:///o/v0.flac")
    repo.record_evaluation(session, "tempo", 0.5, output=output)
    evaluations = lambda: session.scalar(select(func.count()).select_from(Evaluation))
    assert not repo.reopen_lost(session, video, model, key, exists={"file:///o/v0.mp4"}.__contains__)
    assert repo.claim(session, video, model, key, owner="w2") is None
    assert repo.reopen_lost(session, video, model, key, exists=lambda uri: False)
    assert not repo.reopen_lost(session, video, model, key, exists=lambda uri: False)   # once
    assert repo.done(session, video, model, key) is None and evaluations() == 1        # kept until replaced
    job = repo.claim(session, video, model, key, owner="w2")
    repo.complete(session, job, "w2", video, model, None, settings, video_uri="file:///p/v0.mp4",
                  track_uri="file:///p/v0.flac")
    assert repo.done(session, video, model, key).video_uri == "file:///p/v0.mp4" and evaluations() == 0


def test_a_deleted_copy_found_twice_is_scored_again_once(database_url):
    """Worker B finds the scored copy gone, but worker A reopens, scores and records the video anew while
    B's store answers: B must not reopen the job A has just finished."""
    session, other = _session(database_url), _session(database_url)
    (video,) = _videos(session, 1)
    model = repo.model_version(session, "tiny", "preset:tiny")
    settings = {"seed": 0}
    key = repo.settings_hash(settings)
    job = repo.claim(session, video, model, key, owner="w1")
    repo.complete(session, job, "w1", video, model, None, settings, video_uri="file:///o/v0.mp4",
                  track_uri="file:///o/v0.flac")

    def gone_and_meanwhile_rescored_by_a(uri):
        assert repo.reopen_lost(other, video, model, key, exists=lambda uri: False)
        job = repo.claim(other, video, model, key, owner="a")
        repo.complete(other, job, "a", video, model, None, settings, video_uri="file:///p/v0.mp4",
                      track_uri="file:///p/v0.flac")
        return False

    assert not repo.reopen_lost(session, video, model, key, exists=gone_and_meanwhile_rescored_by_a)
    assert repo.claim(session, video, model, key, owner="b") is None
    assert repo.done(session, video, model, key).video_uri == "file:///p/v0.mp4"


def test_a_copy_of_a_file_is_listed_with_its_content_s_status_and_error(database_url):
    """The same content under two keys has one job: `videos list` shows both keys done, or both failed
    with the cause, not the second one as never tried."""
    session = _session(database_url)
    cat = repo.catalog(session, "library", "file:///library")
    now = datetime.now(timezone.utc)
    scored, _, bad, _ = (repo.register_video(session, cat, ObjectInfo(key, 10, None, now), f"file:///library/{key}",
                                             f"sha256:{content:064d}")[0]
                         for key, content in (("a.mp4", 1), ("copies/a.mp4", 1), ("b.mp4", 2), ("copies/b.mp4", 2)))
    model = repo.model_version(session, "tiny", "preset:tiny")
    job = repo.claim(session, scored, model, "k", owner="w1")
    repo.complete(session, job, "w1", scored, model, None, {}, video_uri="file:///o/a.mp4",
                  track_uri="file:///o/a.flac")
    job = repo.claim(session, bad, model, "k", owner="w1")
    repo.record_error(session, bad, None, "probe", "not a video")
    repo.release(session, job, "w1", "failed")
    listed = {v.key: (s, e.cause if e else None) for v, s, e in repo.videos(session)}
    assert listed == {"a.mp4": ("done", None), "copies/a.mp4": ("done", None),
                      "b.mp4": ("failed", "not a video"), "copies/b.mp4": ("failed", "not a video")}
    assert [v.key for v, _, _ in repo.videos(session, "failed")] == ["b.mp4", "copies/b.mp4"]


def test_failed_work_waits_for_an_explicit_retry(database_url):
    session = _session(database_url)
    (video,) = _videos(session, 1)
    model = repo.model_version(session, "tiny", "preset:tiny")
    job = repo.claim(session, video, model, "k", owner="w1")
    repo.record_error(session, video, None, "probe", "not a video")
    repo.release(session, job, "w1", "failed")
    assert repo.claim(session, video, model, "k", owner="w2") is None
    assert repo.claim(session, video, model, "k", owner="w2", retry_failed=True) is not None


def test_an_expired_lease_is_taken_again(database_url):
    session = _session(database_url)
    (video,) = _videos(session, 1)
    model = repo.model_version(session, "tiny", "preset:tiny")
    job = repo.claim(session, video, model, "k", owner="crashed-worker", lease_s=600)
    assert repo.claim(session, video, model, "k", owner="w2") is None       # still leased
    session.execute(update(Job).where(Job.id == job.id)
                    .values(lease_expires_at=repo.utcnow() - timedelta(seconds=1)))  # the crash, 10 min on
    session.commit()
    taken = repo.claim(session, video, model, "k", owner="w2")
    assert taken is not None and taken.owner == "w2" and taken.attempts == 2
    assert not repo.renew(session, job, "crashed-worker")                    # the old holder lost it


def _claim_all(url, owner, n):
    session = sessionmaker(make_engine(url), expire_on_commit=False)()
    videos = _videos(session, n)
    model = repo.model_version(session, "tiny", "preset:tiny")
    return [v.key for v in videos if repo.claim(session, v, model, "k", owner=owner) is not None]


def test_two_processes_claiming_the_same_videos_get_each_once(database_url):
    upgrade(database_url)
    session = _session(database_url)
    _videos(session, 40)
    repo.model_version(session, "tiny", "preset:tiny")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        a, b = pool.starmap(_claim_all, [(database_url, "w1", 40), (database_url, "w2", 40)])
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(f"v{i}.mp4" for i in range(40))


def test_a_catalog_recorded_by_a_relative_name_is_taken_over_not_doubled(database_url, tmp_path, monkeypatch):
    """Runs once recorded `lib` for the folder they now record as its absolute path: the same catalog."""
    session = _session(database_url)
    monkeypatch.chdir(tmp_path)
    old = repo.catalog(session, "lib", "lib")
    absolute = str(tmp_path / "lib")
    assert repo.catalog(session, absolute, absolute).id == old.id
    assert (old.name, old.source_uri) == (absolute, absolute)
    assert repo.catalog(session, "other", absolute).id != old.id      # a name of the user's own is its own catalog
    s3 = repo.catalog(session, "s3://bucket/lib/", "s3://bucket/lib/")
    assert repo.catalog(session, "s3://bucket/lib", "s3://bucket/lib").id == s3.id
