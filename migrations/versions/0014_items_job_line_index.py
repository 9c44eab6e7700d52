"""items (job_id, line_no): results and exports read a job's items in input order, a chunk at a time

Without it every chunk re-sorts the job's remaining items (a temporary B-tree per chunk): exporting a job
cost time quadratic in its size.

Revision ID: 0014
Revises: 0013
"""
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_job_line", "items", ["job_id", "line_no"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_items_job_line", table_name="items")
