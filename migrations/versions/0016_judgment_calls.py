"""judgments: the runner holding a pair in flight, the judge calls answered (every attempt's, added up), and
the calls cut off or timed out with what they may have cost at most

A retried pair used to overwrite its tokens and cost, and judge calls cut off by a crash were never counted:
spend must add up every judge call that may have been billed.

Revision ID: 0016
Revises: 0015
"""
from alembic import op
import sqlalchemy as sa

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("judgments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("calls", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("unanswered_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("unanswered_cost_usd", sa.Float(), nullable=False, server_default="0"))
    # rows judged before: each answered call of theirs (two per pair, whichever mode) is in their tokens
    op.execute("UPDATE judgments SET calls = 2 WHERE prompt_tokens > 0")


def downgrade() -> None:
    with op.batch_alter_table("judgments", schema=None) as batch_op:
        batch_op.drop_column("unanswered_cost_usd")
        batch_op.drop_column("unanswered_attempts")
        batch_op.drop_column("calls")
        batch_op.drop_column("claimed_by")
