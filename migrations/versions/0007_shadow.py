"""shadow calls

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow_fraction", sa.Float(), nullable=True))
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("shadow_answer", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("shadow_prompt_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("shadow_completion_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("shadow_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("shadow_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        for name in ("shadow_error", "shadow_cost_usd", "shadow_completion_tokens", "shadow_prompt_tokens",
                     "shadow_answer", "shadow"):
            batch_op.drop_column(name)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("shadow_fraction")
