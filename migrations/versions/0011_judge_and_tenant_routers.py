"""the judge and per-tenant routers: judgments of shadow pairs, feedback's tenant and source, a job's judge
mode, router versions per tenant

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("judge", sa.String(length=20), nullable=True))
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=40), nullable=False, server_default="local"))
        batch_op.add_column(sa.Column("source", sa.String(length=20), nullable=False, server_default="user"))
        batch_op.add_column(sa.Column("judge_model", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("prompt_version", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key("fk_feedback_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])
        batch_op.create_index("ix_feedback_tenant_created", ["tenant_id", "created_at"], unique=False)
    # feedback given before this belongs to its job's tenant
    op.execute("UPDATE feedback SET tenant_id = (SELECT jobs.tenant_id FROM items JOIN jobs ON jobs.id = "
               "items.job_id WHERE items.id = feedback.item_id)")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.alter_column("tenant_id", server_default=None)
        batch_op.alter_column("source", server_default=None)
    with op.batch_alter_table("router_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key("fk_router_versions_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])
        batch_op.create_index("ix_router_versions_tenant_id", ["tenant_id"], unique=False)
    op.create_table(
        "judgments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("judge_model", sa.String(length=200), nullable=False),
        sa.Column("prompt_version", sa.String(length=40), nullable=False),
        sa.Column("heldout", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("verdicts", sa.JSON(), nullable=True),
        sa.Column("label", sa.Float(), nullable=True),
        sa.Column("strong_quality", sa.Float(), nullable=True),
        sa.Column("weak_quality", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_id"),
    )
    op.create_index("ix_judgments_job_status", "judgments", ["job_id", "status"], unique=False)
    op.create_index("ix_judgments_tenant_heldout", "judgments", ["tenant_id", "heldout"], unique=False)
    op.create_index("ix_judgments_finished_at", "judgments", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_judgments_finished_at", table_name="judgments")
    op.drop_index("ix_judgments_tenant_heldout", table_name="judgments")
    op.drop_index("ix_judgments_job_status", table_name="judgments")
    op.drop_table("judgments")
    with op.batch_alter_table("router_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_router_versions_tenant_id")
        batch_op.drop_constraint("fk_router_versions_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_column("tenant_id")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_tenant_created")
        batch_op.drop_constraint("fk_feedback_tenant_id_tenants", type_="foreignkey")
        for name in ("prompt_version", "judge_model", "source", "tenant_id"):
            batch_op.drop_column(name)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("judge")
