"""Schema, migrations, idempotency and leases against SQLite and a real PostgreSQL server."""

import multiprocessing
from datetime import datetime, timedelta, timezone

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import sessionmaker

from storage import repository as repo
from storage.db import connect, downgrade, make_engine, upgrade
from storage.models import Base, Evaluation, Job, Output
from storage.objects import ObjectInfo

WRITTEN = ObjectInfo("v0.mp4", 100, None, datetime(2026, 1, 1, tzinfo=timezone.utc))  # a scored video as uploaded

TABLES = {"catalogs", "videos", "shots", "model_versions", "runs", "jobs", "outputs", "deliveries", "video_errors"}


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
    assert not repo.reopen_lost(session, video, model, key, kept=lambda output: output.video_uri == "file:///o/v0.mp4")
    assert repo.claim(session, video, model, key, owner="w2") is None
    assert repo.reopen_lost(session, video, model, key, kept=lambda output: False)
    assert not repo.reopen_lost(session, video, model, key, kept=lambda output: False)   # once
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

    def gone_and_meanwhile_rescored_by_a(output):
        assert repo.reopen_lost(other, video, model, key, kept=lambda output: False)
        job = repo.claim(other, video, model, key, owner="a")
        repo.complete(other, job, "a", video, model, None, settings, video_uri="file:///p/v0.mp4",
                      track_uri="file:///p/v0.flac")
        return False

    assert not repo.reopen_lost(session, video, model, key, kept=gone_and_meanwhile_rescored_by_a)
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


def test_a_video_is_listed_as_its_catalogs_latest_run_sees_it(database_url, tmp_path):
    """Done while its scored copy is delivered in the latest run's output, for that run's model and
    settings: scored into one output and run into another that lacks its copy, it is pending there; run
    with other settings, new; a catalog no run scored shows its content's newest job."""
    from storage.objects import open_store

    session = _session(database_url)
    cat = repo.catalog(session, "library", "file:///library")
    now = datetime.now(timezone.utc)
    video, _ = repo.register_video(session, cat, ObjectInfo("a.mp4", 10, None, now), "file:///library/a.mp4", "sha256:1")
    model = repo.model_version(session, "tiny", "preset:tiny")
    settings, first_out, second_out = {"target_lufs": -14.0}, str(tmp_path / "first"), str(tmp_path / "second")
    run = repo.start_run(session, cat, model, settings, {"output": first_out})
    job = repo.claim(session, video, model, repo.settings_hash(settings), owner="w")
    scored = open_store(first_out).uri("a.mp4")
    repo.complete(session, job, "w", video, model, run, settings, video_uri=scored, track_uri=scored + ".flac",
                  delivered=[(scored, ObjectInfo("a.mp4", 99, None, now), "sha256:9")])
    status = lambda: [(v.key, s) for v, s, _ in repo.videos(session, catalog=cat)]
    assert status() == [("a.mp4", "done")]
    repo.start_run(session, cat, model, settings, {"output": second_out})      # its copy not there (yet)
    assert status() == [("a.mp4", "pending")] and repo.videos(session, "done") == []
    repo.start_run(session, cat, model, {"target_lufs": -23.0}, {"output": first_out})   # other settings
    assert status() == [("a.mp4", "new")]
    clips = repo.catalog(session, "clips", "file:///clips")                    # never run: its content's job
    copy, _ = repo.register_video(session, clips, ObjectInfo("a.mp4", 10, None, now), "file:///clips/a.mp4", "sha256:1")
    assert [(v.key, s) for v, s, _ in repo.videos(session, catalog=clips)] == [("a.mp4", "done")]
    session.close()


def test_a_delivery_holds_while_its_file_is_the_one_written(database_url):
    """A file at a delivered URI is gvmgen's while its size and modification time (local) or ETag (S3)
    are those recorded; changed, only if it has the digest of a scored video of that size (touched,
    copied, moved), which is then recorded where it was found. A delivery carried over without them is
    taken as first found. A scored video's delivery is of its job: another content's is stale there."""
    session = _session(database_url)
    video, other = _videos(session, 2)
    model = repo.model_version(session, "tiny", "preset:tiny")
    job = repo.claim(session, video, model, "k", owner="w1")
    repo.complete(session, job, "w1", video, model, None, {}, video_uri="file:///o/v0.mp4",
                  track_uri="file:///o/v0.flac", delivered=[("file:///o/v0.mp4", WRITTEN, "sha256:w")])
    asked = []

    def holding(uri, found, digest="sha256:w"):
        return repo.holding(session, repo.delivery(session, uri), uri, found, lambda: asked.append(uri) or digest)

    later = WRITTEN.modified + timedelta(seconds=1)
    assert holding("file:///o/v0.mp4", WRITTEN).uri == "file:///o/v0.mp4" and asked == []     # no read
    assert holding("file:///o/v0.mp4", ObjectInfo("v0.mp4", 100, None, later), digest="sha256:x") is None
    assert holding("file:///o/v0.mp4", ObjectInfo("v0.mp4", 101, None, WRITTEN.modified)) is None
    assert asked == ["file:///o/v0.mp4"]                           # another size: not even read
    assert holding("file:///o/v0.mp4", None) is None
    touched = ObjectInfo("v0.mp4", 100, None, later)
    assert holding("file:///o/v0.mp4", touched).modified_at == later.replace(tzinfo=None)   # recorded anew
    moved = holding("file:///p/v0.mp4", ObjectInfo("v0.mp4", 100, None, later))            # copied elsewhere
    assert moved is not None and repo.of_job(moved, job) and moved.digest == "sha256:w"
    assert holding("file:///q/v0.mp4", ObjectInfo("v0.mp4", 100, None, later), digest="sha256:x") is None
    other_job = repo.claim(session, other, model, "k", owner="w1")   # the same bytes written for another job
    repo.record_delivery(session, "file:///o/v1.mp4", other_job, ObjectInfo("v1.mp4", 100, None, later), "sha256:w")
    for wanted in (job, other_job):                              # a copy found is the wanted job's, if either
        found = ObjectInfo("v0.mp4", 100, None, later + timedelta(seconds=5))
        assert repo.of_job(repo.holding(session, None, "file:///r/v0.mp4", found, lambda: "sha256:w", wanted), wanted)
    assert repo.of_job(moved, job) and not repo.of_job(moved, other_job)
    assert holding("file:///o/v0.mp4", ObjectInfo("v0.mp4", 7, None, later), digest="sha256:x") is None

    s3 = ObjectInfo("v0.mp4", 100, "etag-1", later)
    repo.record_delivery(session, "s3://b/o/v0.mp4", job, s3, "etag:etag-1")
    repo.record_delivery(session, "s3://b/o/v0.mp4", job, s3, "etag:etag-1")                # again: replaced
    assert list(repo.deliveries(session, "s3://b/o")) == ["s3://b/o/v0.mp4"] and repo.deliveries(session, "s3://b/o2") == {}
    assert holding("s3://b/o/v0.mp4", ObjectInfo("v0.mp4", 100, "etag-1", later + timedelta(days=1))) is not None
    assert holding("s3://b/o/v0.mp4", ObjectInfo("v0.mp4", 100, "etag-2", later), digest="etag:etag-2") is None
    # a delivery recorded by its ETag (before S3 digests were SHA-256) is still found by it elsewhere, unread
    asked.clear()
    copied = holding("s3://b/p/v0.mp4", ObjectInfo("v0.mp4", 100, "etag-1", later), digest="sha256:new")
    assert copied is not None and repo.of_job(copied, job) and asked == []

    there = repo.delivery(session, "s3://b/o/v0.mp4")
    there.size = there.etag = there.digest = None                   # carried over from before deliveries
    session.commit()
    assert holding("s3://b/o/v0.mp4", ObjectInfo("v0.mp4", 55, "etag-3", later), digest="etag:etag-3") is not None
    assert (there.size, there.etag, there.digest) == (55, "etag-3", "etag:etag-3")          # recorded as found


def test_a_master_of_several_gigabytes_is_registered(database_url):
    session = _session(database_url)
    cat = repo.catalog(session, "library", "file:///library")
    video, _ = repo.register_video(session, cat, ObjectInfo("master.mov", 37 << 30, None, datetime.now(timezone.utc)),
                                   "file:///library/master.mov", "sha256:" + "0" * 64)
    session.expire_all()
    assert session.get(type(video), video.id).size == 37 << 30


def test_the_deliveries_made_before_they_were_recorded_are_carried_over(database_url):
    """At the upgrade, each recorded output and each copy a run made of one under a duplicate's key becomes
    a delivery of unknown identity (a copy is never assumed where the run's output is relative), and
    nothing recorded is lost on the way."""
    from sqlalchemy import text

    upgrade(database_url, "0007")
    engine = make_engine(database_url)
    at = datetime(2026, 1, 1)
    with engine.begin() as c:
        c.execute(text("INSERT INTO catalogs (id, name, source_uri, created_at) VALUES (1, 'lib', '/lib', :t)"), {"t": at})
        c.execute(text("INSERT INTO model_versions (id, name, checkpoint_uri, metrics, created_at) "
                       "VALUES (1, 'tiny', 'preset:tiny', '{}', :t)"), {"t": at})
        for i, (key, content) in enumerate([("a.mp4", "h1"), ("copies/a.mp4", "h1"), ("b.mp4", "h2")], 1):
            c.execute(text("INSERT INTO videos (id, catalog_id, key, source_uri, content_hash, size) "
                           "VALUES (:i, 1, :k, :u, :h, 1)"), {"i": i, "k": key, "u": f"file:///lib/{key}", "h": content})
        for content, status in (("h1", "done"), ("h2", "failed")):
            c.execute(text("INSERT INTO jobs (video_id, content_hash, model_version_id, settings_hash, status, attempts, "
                           "destination) VALUES (1, :h, 1, 's', :st, 1, 'file:///out/a.mp4')"), {"h": content, "st": status})
        c.execute(text("INSERT INTO outputs (video_id, content_hash, model_version_id, settings_hash, settings, "
                       "video_uri, track_uri, created_at) VALUES (1, 'h1', 1, 's', '{}', 'file:///out/a.mp4', "
                       "'file:///out/a.flac', :t)"), {"t": at})
        for i, output in enumerate(["/out", "/elsewhere/", "relative/out"], 1):
            c.execute(text("INSERT INTO runs (id, catalog_id, model_version_id, settings_hash, parameters, status, "
                           "started_at, scored, skipped, failed) VALUES (:i, 1, 1, 's', :p, 'completed', :t, 0, 0, 0)"),
                      {"i": i, "p": f'{{"output": "{output}"}}', "t": at})
    upgrade(database_url)
    session = sessionmaker(engine)()
    delivered = {d.uri: (d.content_hash, d.model_version_id, d.settings_hash, d.size)
                 for d in repo.deliveries(session, "file:///").values()}
    assert delivered == {f"file:///{folder}/{key}{suffix}": ("h1", 1, "s", None) for folder in ("out", "elsewhere")
                         for key in ("a", "copies/a") for suffix in (".mp4", ".flac")}   # its track too
    assert session.scalars(select(Job.destination).order_by(Job.id)).all() == [None, "file:///out/a.mp4"]
    # SQLite alters a table by copying it: the rows that refer to it (outputs, jobs) are all still there
    assert session.scalars(select(Output.video_uri)).all() == ["file:///out/a.mp4"]


def test_a_video_gone_from_its_library_is_listed_as_removed_until_it_is_back(database_url):
    session = _session(database_url)
    a, b = _videos(session, 2)
    cat = repo.catalog(session, "library", "file:///library")
    known = lambda: list(repo.catalog_videos(session, cat).values())
    assert repo.mark_removed(session, known(), {"v0.mp4"}) == 1 and repo.mark_removed(session, known(), {"v0.mp4"}) == 0
    assert [(v.key, s) for v, s, _ in repo.videos(session)] == [("v0.mp4", "new"), ("v1.mp4", "removed")]
    assert [v.key for v, _, _ in repo.videos(session, "removed")] == ["v1.mp4"]
    repo.register_video(session, cat, ObjectInfo("v1.mp4", 11, None, datetime.now(timezone.utc)),
                        "file:///library/v1.mp4", b.content_hash)                  # back in the library
    assert [s for _, s, _ in repo.videos(session)] == ["new", "new"]


def test_a_catalog_is_evaluated_by_one_model_over_the_videos_it_has_now(database_url):
    """A catalog scored by `tiny`, then by a fine-tuned model, is never averaged across the two: by
    default the newest model's outputs, else the one asked for; a video removed from the library or
    changed since it was scored is left out. A catalog's FAD stays apart from another catalog's."""
    import pytest

    session = _session(database_url)
    videos = _videos(session, 4)
    cat = repo.catalog(session, "library", "file:///library")
    tiny, tuned = repo.model_version(session, "tiny", "preset:tiny"), repo.model_version(session, "tuned", "file:///m/")
    key = repo.settings_hash({})

    def score(model, video):
        job = repo.claim(session, video, model, key, owner="w")
        return repo.complete(session, job, "w", video, model, None, {}, video_uri=f"file:///o/{model.name}/{video.key}",
                             track_uri=f"file:///o/{model.name}/{video.key}.flac")

    by_tiny = {v.key: score(tiny, v) for v in videos}
    by_tuned = {v.key: score(tuned, v) for v in videos[:2]}
    repo.register_video(session, cat, ObjectInfo("v1.mp4", 99, None, datetime.now(timezone.utc)),
                        "file:///library/v1.mp4", "sha256:changed")                 # v1 is another video now
    repo.register_video(session, cat, ObjectInfo("copy.mp4", 12, None, datetime.now(timezone.utc)),
                        "file:///library/copy.mp4", videos[2].content_hash)        # a copy of v2, given v2's music
    repo.mark_removed(session, list(repo.catalog_videos(session, cat).values()), {"v0.mp4", "v1.mp4", "v2.mp4", "copy.mp4"})

    newest = repo.outputs_to_evaluate(session, "library")
    assert (newest.catalog.id, newest.run, newest.model.name) == (cat.id, None, "tuned")
    assert [(o.id, v.key) for o, v in newest.found] == [(by_tuned["v0.mp4"].id, "v0.mp4")]
    asked = repo.outputs_to_evaluate(session, "file:///library", model="tiny")
    assert [(o.id, v.key) for o, v in asked.found] == [(by_tiny["v2.mp4"].id, "copy.mp4"), (by_tiny["v0.mp4"].id, "v0.mp4"),
                                                       (by_tiny["v2.mp4"].id, "v2.mp4")]
    with pytest.raises(ValueError, match="--model nobody: no such model"):
        repo.outputs_to_evaluate(session, "library", model="nobody")

    other = repo.catalog(session, "other", "file:///other")
    (elsewhere,) = [repo.register_video(session, other, ObjectInfo("x.mp4", 1, None, datetime.now(timezone.utc)),
                                        "file:///other/x.mp4", "sha256:other")[0]]
    score(tiny, elsewhere)
    for scope, value in ((newest, 1.0), (asked, 2.0), (repo.outputs_to_evaluate(session, "other"), 3.0), (asked, 4.0)):
        repo.record_evaluation(session, "fad_clap", value, scope=scope)
    stored = session.execute(select(Evaluation.catalog_id, Evaluation.model_version_id, Evaluation.value)
                             .where(Evaluation.metric == "fad_clap")).all()
    assert sorted(stored) == sorted([(cat.id, tuned.id, 1.0), (cat.id, tiny.id, 4.0), (other.id, tiny.id, 3.0)])

    # a later run into the same output wrote the tuned model's track over tiny's of v0: tiny's is not there to evaluate
    repo.record_delivery(session, by_tiny["v0.mp4"].track_uri, by_tuned["v0.mp4"],
                         ObjectInfo("tiny/v0.mp4.flac", 5, None, datetime.now(timezone.utc)), "sha256:tuned")
    assert [v.key for _, v in repo.outputs_to_evaluate(session, "library", model="tiny").found] == ["copy.mp4", "v2.mp4"]
    session.close()


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


def test_a_server_behind_or_ahead_of_the_migrations_is_refused_with_what_to_do(database_url):
    """A shared database is migrated by `gvmgen db upgrade` only; one left behind by an upgrade of gvmgen
    is refused when first reached (not by a query failing mid-run on a column added since), as is one a
    newer gvmgen migrated."""
    import pytest
    from alembic.script import ScriptDirectory

    from storage.db import alembic_config

    if database_url.startswith("sqlite"):
        pytest.skip("the embedded database is migrated on first use (test above)")
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_revision("head")
    upgrade(database_url, head.down_revision)
    with pytest.raises(ValueError, match=rf"its schema is at revision {head.down_revision}, this gvmgen needs "
                                         rf"{head.revision}: run `gvmgen db upgrade`"):
        connect(database_url)
    upgrade(database_url)
    with connect(database_url)() as session:
        assert repo.runs(session, 5) == []
    with make_engine(database_url).begin() as conn:   # as a newer gvmgen's migration would leave it
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(ValueError, match=rf"at revision 9999, this gvmgen needs {head.revision}: a newer gvmgen "
                                         "migrated it: upgrade this one"):
        connect(database_url)
