"""runs: the worker that ran it, why it stopped (infrastructure, interruption) and how many videos
stood failed from earlier runs

Revision ID: 0006
Revises: 0005_training_monitor
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005_training_monitor'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('worker', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('cause', sa.Text(), nullable=True))
        batch.add_column(sa.Column('failed_earlier', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('failed_earlier')
        batch.drop_column('cause')
        batch.drop_column('worker')
