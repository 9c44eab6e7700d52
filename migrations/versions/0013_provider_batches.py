"""provider batches: a tier's routed share sent through its provider's Batch API, and each item's batch

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("tier", sa.String(length=10), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("n_requests", sa.Integer(), nullable=False),
        sa.Column("input_file_id", sa.String(length=200), nullable=True),
        sa.Column("provider_batch_id", sa.String(length=200), nullable=True),
        sa.Column("provider_status", sa.String(length=40), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_provider_batches_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_provider_batches"),
    )
    op.create_index("ix_provider_batches_job_status", "provider_batches", ["job_id", "status"], unique=False)
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_batch_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_items_provider_batch_id_provider_batches", "provider_batches",
                                    ["provider_batch_id"], ["id"], ondelete="SET NULL")
        batch_op.create_index("ix_items_provider_batch_id", ["provider_batch_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_provider_batch_id")
        batch_op.drop_constraint("fk_items_provider_batch_id_provider_batches", type_="foreignkey")
        batch_op.drop_column("provider_batch_id")
    op.drop_index("ix_provider_batches_job_status", table_name="provider_batches")
    op.drop_table("provider_batches")
