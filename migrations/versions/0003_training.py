"""training: the clip manifest of training sets, and training metrics

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('training_clips',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('encoders', sa.String(length=64), nullable=False),
    sa.Column('video_id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=160), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('start', sa.Float(), nullable=False),
    sa.Column('end', sa.Float(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('shard_uri', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['video_id'], ['videos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('encoders', 'content_hash', 'index')
    )
    op.create_index(op.f('ix_training_clips_encoders'), 'training_clips', ['encoders'], unique=False)
    op.create_index(op.f('ix_training_clips_video_id'), 'training_clips', ['video_id'], unique=False)
    op.create_table('training_metrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=255), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('loss', sa.Float(), nullable=False),
    sa.Column('accuracy', sa.Float(), nullable=False),
    sa.Column('lr', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_name', 'step', 'split')
    )
    op.create_index(op.f('ix_training_metrics_model_name'), 'training_metrics', ['model_name'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_training_metrics_model_name'), table_name='training_metrics')
    op.drop_table('training_metrics')
    op.drop_index(op.f('ix_training_clips_video_id'), table_name='training_clips')
    op.drop_index(op.f('ix_training_clips_encoders'), table_name='training_clips')
    op.drop_table('training_clips')
