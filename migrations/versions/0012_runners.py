"""runners: processes that run jobs (Celery workers, embedded runners) and their heartbeats; the embedded
runner that holds a job; the runner that claimed an item in flight; an item's HTTP attempts, those that got no
answer (timed out: perhaps billed), and what those may have cost at most

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runners",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_runners_heartbeat_at", "runners", ["heartbeat_at"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runner_id", sa.String(length=120), nullable=True))
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("call_attempts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("unanswered_attempts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("unanswered_cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("unanswered_cost_usd")
        batch_op.drop_column("unanswered_attempts")
        batch_op.drop_column("call_attempts")
        batch_op.drop_column("claimed_by")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("runner_id")
    op.drop_index("ix_runners_heartbeat_at", table_name="runners")
    op.drop_table("runners")
