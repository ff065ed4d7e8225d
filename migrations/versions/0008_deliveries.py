"""deliveries: each file of a scored video gvmgen put in an output (a recorded output or a duplicate's
copy: the video, its track, its report), with its size, ETag or modification time and digest, so that
a file changed or replaced there since is told apart.
videos.size: a 64-bit integer (a 3 GB master overflowed PostgreSQL's integer); videos.removed_at: when
a video was first missing from its library's listing. jobs.destination: kept only until the job is done.

The files already delivered are carried over with their identity unknown (size NULL): each is taken as
it is when a run next finds it. Those are the recorded outputs, and the copies runs made of them: a done
video of a run's catalog has its copy at the run's output under its own key.

Revision ID: 0008
Revises: 0007
"""
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

JOB = ('content_hash', 'model_version_id', 'settings_hash')


def upgrade() -> None:
    with op.batch_alter_table('videos') as batch:
        batch.alter_column('size', type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
        batch.add_column(sa.Column('removed_at', sa.DateTime(), nullable=True))
    deliveries = op.create_table(
        'deliveries',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('uri', sa.Text(), nullable=False, unique=True),
        sa.Column('content_hash', sa.String(length=160), nullable=False),
        sa.Column('model_version_id', sa.Integer(), sa.ForeignKey('model_versions.id'), nullable=False),
        sa.Column('settings_hash', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=True),
        sa.Column('etag', sa.String(length=160), nullable=True),
        sa.Column('modified_at', sa.DateTime(), nullable=True),
        sa.Column('digest', sa.String(length=160), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
    )
    op.create_index('ix_deliveries_size', 'deliveries', ['size'])
    op.bulk_insert(deliveries, [{'uri': uri, **dict(zip(JOB, job)), 'created_at': _now()}
                                for uri, job in _delivered(op.get_bind()).items()])
    # A done job's destination said its upload was gvmgen's; its delivery says so now, and no longer
    # once the file is replaced.
    jobs = sa.table('jobs', sa.column('status'), sa.column('destination'))
    op.execute(jobs.update().where(jobs.c.status == 'done').values(destination=None))


def _delivered(connection) -> dict[str, tuple]:
    """uri -> (content, model, settings) of every file of a scored video delivered so far (the video, its
    track, its report)."""
    outputs = sa.table('outputs', sa.column('video_uri'), sa.column('track_uri'), sa.column('report_uri'),
                       *map(sa.column, JOB), sa.column('created_at'))
    runs = sa.table('runs', sa.column('catalog_id'), sa.column('model_version_id'), sa.column('settings_hash'),
                    sa.column('parameters', sa.JSON))
    videos = sa.table('videos', sa.column('catalog_id'), sa.column('key'), sa.column('content_hash'))
    jobs = sa.table('jobs', sa.column('status'), *map(sa.column, JOB))
    delivered, beside = {}, {}   # beside: job -> the suffixes of its track and report
    # oldest first: where a source changed and its new content was scored to the same place, the newest stands
    for video_uri, track_uri, report_uri, *job in connection.execute(
            sa.select(*outputs.c[('video_uri', 'track_uri', 'report_uri', *JOB)]).order_by(outputs.c.created_at)):
        job = tuple(job)
        delivered.update((uri, job) for uri in (video_uri, track_uri, report_uri) if uri)
        beside[job] = [PurePosixPath(track_uri).suffix] + (['.report.png'] if report_uri else [])
    done = {tuple(job) for job in connection.execute(sa.select(*jobs.c[JOB]).where(jobs.c.status == 'done'))}
    places = {(catalog, (parameters or {}).get('output'), model, settings)   # a year of nightly runs: one each
              for catalog, model, settings, parameters in connection.execute(sa.select(runs))}
    for catalog, output, model, settings in places:
        root = _root(output)
        if root is None:
            continue
        for key, content in connection.execute(
                sa.select(videos.c.key, videos.c.content_hash).where(videos.c.catalog_id == catalog)):
            job = (content, model, settings)
            if job in done and job in beside and root(key) not in delivered:
                names = [key] + [str(PurePosixPath(key).with_suffix(suffix)) for suffix in beside[job]]
                delivered.update((root(name), job) for name in names)
    return delivered


def _root(output: str | None):
    """How storage.objects' stores name an object of a run's output (key -> URI); None for a run without
    one, or with an output recorded relative, before runs made them absolute."""
    if not output:
        return None
    if output.startswith('s3://'):
        return lambda key: f"{output.rstrip('/')}/{key}"
    if not Path(output).is_absolute():
        return None
    folder = Path(output).resolve()
    return lambda key: (folder / key).as_uri()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def downgrade() -> None:
    op.drop_index('ix_deliveries_size', 'deliveries')
    op.drop_table('deliveries')
    with op.batch_alter_table('videos') as batch:
        batch.drop_column('removed_at')
        batch.alter_column('size', type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
