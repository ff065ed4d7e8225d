"""evaluations: a catalog's metrics by one model (FAD and KL over its current outputs), told apart from
another catalog's; before, they were recorded with neither, and each catalog's replaced the last.

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Earlier rows of neither an output nor a run stay as they are: nothing tells whose catalog they were.
    with op.batch_alter_table('evaluations') as batch:
        batch.add_column(sa.Column('catalog_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('model_version_id', sa.Integer(), nullable=True))
        batch.create_foreign_key('fk_evaluations_catalog_id_catalogs', 'catalogs', ['catalog_id'], ['id'],
                                 ondelete='CASCADE')
        batch.create_foreign_key('fk_evaluations_model_version_id_model_versions', 'model_versions',
                                 ['model_version_id'], ['id'], ondelete='CASCADE')
        batch.create_index('ix_evaluations_catalog_id', ['catalog_id'])


def downgrade() -> None:
    with op.batch_alter_table('evaluations') as batch:
        batch.drop_index('ix_evaluations_catalog_id')
        batch.drop_constraint('fk_evaluations_model_version_id_model_versions', type_='foreignkey')
        batch.drop_constraint('fk_evaluations_catalog_id_catalogs', type_='foreignkey')
        batch.drop_column('model_version_id')
        batch.drop_column('catalog_id')
