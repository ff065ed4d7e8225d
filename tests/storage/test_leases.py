"""Leases on jobs: claim, renew, release, complete, and handing back an interrupted run's leases.

Each test states what a worker sees from the database afterwards; times are checked against the
clock read around the call (a lease of s seconds ends s seconds after the call, give or take its
duration). Both SQLite and PostgreSQL, as every storage test.
"""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import sessionmaker

from storage import repository as repo
from storage.db import make_engine
from storage.models import Base, Job, Output
from storage.objects import ObjectInfo

WRITTEN = ObjectInfo("v0.mp4", 100, None, datetime(2026, 1, 1, tzinfo=timezone.utc))  # a scored video as uploaded


@pytest.fixture
def session(database_url):
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)  # the schema the migrations make (test_db.py checks they agree), faster
    with sessionmaker(engine, expire_on_commit=False)() as s:
        yield s
    engine.dispose()


@pytest.fixture
def model(session):
    return repo.model_version(session, "tiny", "preset:tiny")


def _videos(session, n, same_content=False):
    """n videos of one catalog; with same_content, n copies of one file (one content hash)."""
    cat = repo.catalog(session, "library", "file:///library")
    now = datetime.now(timezone.utc)
    return [repo.register_video(session, cat, ObjectInfo(f"v{i}.mp4", 10, None, now), f"file:///library/v{i}.mp4",
                                f"sha256:{0 if same_content else i:064d}")[0] for i in range(n)]


def _fresh(session, job):
    """The job's row as the database has it now (another worker may have changed it)."""
    session.expire_all()
    return session.get(Job, job.id)


def _expire(session, job):
    session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=repo.utcnow() - timedelta(seconds=1)))
    session.commit()


def _lease_ends(session, job, seconds, since):
    """Assert the job's lease ends `seconds` after a call made between `since` and now."""
    lease = _fresh(session, job).lease_expires_at
    assert since + timedelta(seconds=seconds) <= lease <= repo.utcnow() + timedelta(seconds=seconds)


# ---- claim ---------------------------------------------------------------------------------------

def test_a_claim_takes_a_fresh_job_for_its_owner(session, model):
    (video,) = _videos(session, 1)
    before = repo.utcnow()
    job = repo.claim(session, video, model, "k", owner="w1", lease_s=600)
    _lease_ends(session, job, 600, since=before)
    row = _fresh(session, job)
    assert (row.owner, row.status, row.attempts) == ("w1", "pending", 1)
    assert (row.video_id, row.content_hash, row.model_version_id, row.settings_hash) == \
        (video.id, video.content_hash, model.id, "k")


def test_a_lease_lasts_fifteen_minutes_unless_told(session, model):
    (video,) = _videos(session, 1)
    before = repo.utcnow()
    _lease_ends(session, repo.claim(session, video, model, "k", owner="w1"), 900, since=before)


def test_nobody_claims_a_live_lease_not_even_its_holder(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    assert repo.claim(session, video, model, "k", owner="w2") is None
    assert repo.claim(session, video, model, "k", owner="w1") is None
    row = _fresh(session, job)
    assert (row.owner, row.attempts) == ("w1", 1)


def test_an_expired_lease_is_claimed_again_and_the_attempt_counted(session, model):
    (video,) = _videos(session, 1)
    first = repo.claim(session, video, model, "k", owner="w1")
    _expire(session, first)
    again = repo.claim(session, video, model, "k", owner="w2")
    assert again.id == first.id and (again.owner, again.attempts) == ("w2", 2)


def test_one_job_per_content_model_and_settings(session, model):
    a, b = _videos(session, 2)
    other_model = repo.model_version(session, "other", "preset:tiny")
    jobs = [repo.claim(session, v, m, key, owner="w") for v in (a, b) for m in (model, other_model) for key in "kl"]
    assert len({j.id for j in jobs}) == 8
    assert session.scalar(select(func.count()).select_from(Job)) == 8


def test_a_copy_of_a_video_shares_its_job_and_takes_it_over(session, model):
    """Jobs are keyed by content: a second file with the same content is the same work; the job points at
    the video that claimed it last."""
    original, copy = _videos(session, 2, same_content=True)
    job = repo.claim(session, original, model, "k", owner="w1")
    repo.release(session, job, "w1", "pending")
    taken = repo.claim(session, copy, model, "k", owner="w2")
    assert taken.id == job.id and taken.video_id == copy.id
    assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_failed_work_is_claimed_only_when_retrying_and_then_counts_afresh(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    _expire(session, job)
    job = repo.claim(session, video, model, "k", owner="w1")          # attempt 2
    repo.release(session, job, "w1", "failed")
    assert repo.claim(session, video, model, "k", owner="w2") is None
    retried = repo.claim(session, video, model, "k", owner="w2", retry_failed=True)
    assert (retried.owner, retried.status, retried.attempts) == ("w2", "pending", 1)


def test_a_pending_job_is_not_restarted_by_a_retry(session, model):
    """retry_failed takes pending jobs too, and counts their attempts on."""
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    repo.release(session, job, "w1", "pending")
    again = repo.claim(session, video, model, "k", owner="w2", retry_failed=True)
    assert (again.owner, again.attempts) == ("w2", 2)


def test_done_work_is_never_claimed_again(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    repo.release(session, job, "w1", "done")
    assert repo.claim(session, video, model, "k", owner="w2") is None
    assert repo.claim(session, video, model, "k", owner="w2", retry_failed=True) is None


# ---- job_of --------------------------------------------------------------------------------------

def test_job_of_finds_the_job_of_exactly_that_content_model_and_settings(session, model):
    a, b = _videos(session, 2)
    other_model = repo.model_version(session, "other", "preset:tiny")
    assert repo.job_of(session, a, model, "k") is None
    keys = [(v, m, key) for v in (a, b) for m in (model, other_model) for key in "kl"]
    jobs = [repo.claim(session, *k, owner="w") for k in keys]
    assert [repo.job_of(session, *k).id for k in keys] == [j.id for j in jobs]


# ---- renew ---------------------------------------------------------------------------------------

def test_renewing_extends_the_holders_lease_and_no_other(session, model):
    video, other_video = _videos(session, 2)
    job = repo.claim(session, video, model, "k", owner="w1", lease_s=60)
    other = repo.claim(session, other_video, model, "k", owner="w1", lease_s=60)
    other_lease = _fresh(session, other).lease_expires_at
    before = repo.utcnow()
    assert repo.renew(session, job, "w1", lease_s=600) is True
    _lease_ends(session, job, 600, since=before)
    before = repo.utcnow()
    assert repo.renew(session, job, "w1") is True
    _lease_ends(session, job, 900, since=before)
    assert _fresh(session, other).lease_expires_at == other_lease


def test_only_the_holder_renews(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1", lease_s=60)
    lease = _fresh(session, job).lease_expires_at
    assert repo.renew(session, job, "w2", lease_s=600) is False
    assert _fresh(session, job).lease_expires_at == lease


def test_a_lease_lost_to_another_worker_cannot_be_renewed(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    _expire(session, job)
    repo.claim(session, video, model, "k", owner="w2", lease_s=60)
    lease = _fresh(session, job).lease_expires_at
    assert repo.renew(session, job, "w1") is False
    assert _fresh(session, job).lease_expires_at == lease


# ---- release -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["pending", "failed", "done"])
def test_releasing_ends_the_lease_with_a_status(session, model, status):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    repo.release(session, job, "w1", status)
    row = _fresh(session, job)
    assert (row.owner, row.lease_expires_at, row.status, row.attempts) == (None, None, status, 1)


def test_a_released_pending_job_is_claimed_at_once(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    repo.release(session, job, "w1", "pending")
    assert repo.claim(session, video, model, "k", owner="w2").attempts == 2


def test_only_the_holder_releases(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    repo.release(session, job, "w2", "failed")
    row = _fresh(session, job)
    assert (row.owner, row.status) == ("w1", "pending") and row.lease_expires_at is not None


# ---- release_owner -------------------------------------------------------------------------------

def test_an_interrupted_run_hands_back_its_leases_without_counting_the_attempt(session, model):
    videos = _videos(session, 4)
    mine = [repo.claim(session, v, model, "k", owner="w1") for v in videos[:2]]
    _expire(session, mine[1])                                        # an expired lease is handed back too
    theirs = repo.claim(session, videos[2], model, "k", owner="w2")
    finished = repo.claim(session, videos[3], model, "k", owner="w1")
    repo.release(session, finished, "w1", "done")
    assert repo.release_owner(session, "w1") == 2
    for job in mine:
        row = _fresh(session, job)
        assert (row.owner, row.lease_expires_at, row.status, row.attempts) == (None, None, "pending", 0)
    assert (_fresh(session, theirs).owner, _fresh(session, theirs).attempts) == ("w2", 1)
    assert (_fresh(session, finished).status, _fresh(session, finished).attempts) == ("done", 1)
    assert repo.claim(session, videos[0], model, "k", owner="w3").attempts == 1   # at once, a first attempt


def test_handing_back_nothing(session, model):
    (video,) = _videos(session, 1)
    repo.claim(session, video, model, "k", owner="w1")
    assert repo.release_owner(session, "w2") == 0


def test_handing_back_a_second_attempt_leaves_the_first_counted(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, "k", owner="w1")
    _expire(session, job)
    repo.claim(session, video, model, "k", owner="w2")
    assert repo.release_owner(session, "w2") == 1
    assert _fresh(session, job).attempts == 1


# ---- complete ------------------------------------------------------------------------------------

def test_completing_records_the_output_and_ends_that_job_as_done(session, model):
    video, other_video = _videos(session, 2)
    other = repo.claim(session, other_video, model, "k", owner="w1")     # the worker's other lease stays
    cat = repo.catalog(session, "library", "file:///library")
    settings = {"stitch": "continue", "seed": 3}
    run = repo.start_run(session, cat, model, settings, {})
    job = repo.claim(session, video, model, repo.settings_hash(settings), owner="w1")
    before = repo.utcnow()
    output = repo.complete(session, job, "w1", video, model, run, settings, video_uri="file:///o/v0.mp4",
                           track_uri="file:///o/v0.wav", report_uri="file:///o/v0.html", loudness_lufs=-14.0,
                           true_peak_dbtp=-1.5, seed=3, windows=[[0.0, 30.0], [18.0, 40.0]],
                           delivered=[(uri, WRITTEN, f"sha256:{i}") for i, uri in enumerate(["file:///o/v0.mp4",
                                                                                            "file:///o/v0.wav"])])
    after = repo.utcnow()
    session.expire_all()
    stored = session.scalars(select(Output)).one()
    assert stored.id == output.id
    assert (stored.video_id, stored.run_id, stored.content_hash, stored.model_version_id, stored.settings_hash) == \
        (video.id, run.id, video.content_hash, model.id, repo.settings_hash(settings))
    assert (stored.settings, stored.seed, stored.video_uri, stored.track_uri, stored.report_uri) == \
        (settings, 3, "file:///o/v0.mp4", "file:///o/v0.wav", "file:///o/v0.html")
    assert (stored.loudness_lufs, stored.true_peak_dbtp, stored.windows) == (-14.0, -1.5, [[0.0, 30.0], [18.0, 40.0]])
    assert stored.worker == "w1"                                   # the process that held the lease
    assert before <= stored.created_at <= after
    row = _fresh(session, job)
    assert (row.owner, row.lease_expires_at, row.status) == (None, None, "done")
    assert (_fresh(session, other).owner, _fresh(session, other).status) == ("w1", "pending")
    assert repo.done(session, video, model, repo.settings_hash(settings)).id == output.id
    delivered = repo.deliveries(session, "file:///o")            # its files, as written, in the same transaction
    assert sorted((d.uri, d.digest, d.size) for d in delivered.values()) == [
        ("file:///o/v0.mp4", "sha256:0", 100), ("file:///o/v0.wav", "sha256:1", 100)]
    assert all(repo.of_job(d, job) for d in delivered.values())


def test_an_output_without_a_run_or_extras(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, repo.settings_hash({}), owner="w1")
    repo.complete(session, job, "w1", video, model, None, {}, video_uri="v", track_uri="t")
    session.expire_all()
    stored = session.scalars(select(Output)).one()
    assert (stored.run_id, stored.report_uri, stored.loudness_lufs, stored.true_peak_dbtp, stored.seed,
            stored.windows) == (None, None, None, None, None, None)


def test_a_worker_that_lost_its_lease_records_nothing(session, model):
    (video,) = _videos(session, 1)
    job = repo.claim(session, video, model, repo.settings_hash({}), owner="w1")
    _expire(session, job)
    repo.claim(session, video, model, repo.settings_hash({}), owner="w2")
    assert repo.complete(session, job, "w1", video, model, None, {}, video_uri="v", track_uri="t",
                         delivered=[("v", WRITTEN, "sha256:0")]) is None
    session.expire_all()
    assert session.scalars(select(Output)).all() == [] and repo.delivery(session, "v") is None
    row = _fresh(session, job)
    assert (row.owner, row.status) == ("w2", "pending")
