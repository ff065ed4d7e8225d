"""training_clips.music: which music a video's clips were cut with (its paired file's ETag, or size and
modification time; none: the video's own track), so that a paired file replaced or added since has the
clips cut again. Rows from before hold none and, where a paired file exists, are cut again once.

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_clips') as batch:
        batch.add_column(sa.Column('music', sa.String(length=160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_clips') as batch:
        batch.drop_column('music')
