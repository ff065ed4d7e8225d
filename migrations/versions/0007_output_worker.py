"""outputs: the process (host:pid) that held the video's lease and produced it; looked up by where
the scored video is. jobs: where the scored video is being uploaded. (Is a file in the output folder
ours, recorded or cut off by a crash before its record?)

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('destination', sa.Text(), nullable=True))
    with op.batch_alter_table('outputs') as batch:
        batch.add_column(sa.Column('worker', sa.String(length=128), nullable=True))
        batch.create_index('ix_outputs_video_uri', ['video_uri'])


def downgrade() -> None:
    with op.batch_alter_table('outputs') as batch:
        batch.drop_index('ix_outputs_video_uri')
        batch.drop_column('worker')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('destination')
