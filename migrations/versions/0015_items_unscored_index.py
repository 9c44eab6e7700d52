"""items still to score: a partial index (job_id, id) WHERE score IS NULL

After each scoring batch, routing asks whether any item of the job is left to score. Through (job_id, status)
that walked past every item already scored (they stay pending until routing): quadratic in the job's size,
about 700 items/s at 600k scored on two workers. The partial index holds only the unscored items.

Revision ID: 0015
Revises: 0014
"""
from alembic import op
import sqlalchemy as sa

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_unscored", "items", ["job_id", "id"], unique=False,
                    sqlite_where=sa.text("score IS NULL"), postgresql_where=sa.text("score IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_items_unscored", table_name="items")
