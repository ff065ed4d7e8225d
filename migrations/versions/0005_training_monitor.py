"""training_metrics: the frame tokens' spread and the conditioning gain of each evaluation

Revision ID: 0005_training_monitor
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_training_monitor'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_metrics') as batch:
        batch.add_column(sa.Column('spread', sa.Float(), nullable=True))
        batch.add_column(sa.Column('conditioning_gain', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_metrics') as batch:
        batch.drop_column('conditioning_gain')
        batch.drop_column('spread')
