"""one retrain at a time per owner, and one row per router version per owner

A scheduled retrain that outlasted its interval ran twice at once, and both stored the same version: rollback
by version was then ambiguous. retrain_locks holds the running retrain of each owner (a tenant, or '' for the
global default); router versions get a unique (owner, version) index, after removing the duplicates already
stored (the serving row is kept, else the oldest).

Revision ID: 0017
Revises: 0016
"""
from alembic import op
import sqlalchemy as sa

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrain_locks",
        sa.Column("owner", sa.String(length=40), nullable=False),
        sa.Column("token", sa.String(length=40), nullable=False),
        sa.Column("runner_id", sa.String(length=120), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner"),
    )
    op.execute(sa.text(
        "DELETE FROM router_versions WHERE id IN (SELECT d.id FROM router_versions d WHERE EXISTS ("
        "SELECT 1 FROM router_versions k WHERE coalesce(k.tenant_id, '') = coalesce(d.tenant_id, '') "
        "AND k.version = d.version AND k.id <> d.id "
        "AND (k.serving AND NOT d.serving OR k.serving = d.serving AND k.id < d.id)))"))
    op.create_index("uq_router_versions_owner_version", "router_versions",
                    [sa.text("coalesce(tenant_id, '')"), "version"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_router_versions_owner_version", table_name="router_versions")
    op.drop_table("retrain_locks")
