import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from db.models import Base
from db.session import MIGRATIONS_DIR, make_engine, migrate, open_database


# SQLite cannot reflect the expression index on router versions (coalesce(tenant_id, ''), version): PostgreSQL's
# run of this test compares it.
@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning",
                            "ignore:.*expression-based index:sqlalchemy.exc.SAWarning")
def test_migrations_build_exactly_the_models_and_rerun_as_a_no_op(empty_database_url):
    open_database(empty_database_url)
    engine = make_engine(empty_database_url)
    migrate(engine)  # a second start changes nothing
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert {"jobs", "items", "rejected_lines", "alembic_version"} <= set(inspect(conn).get_table_names())
    engine.dispose()


def test_workers_starting_together_migrate_a_fresh_database_once(empty_database_url):
    """Task threads (and worker processes) open the database at the same moment on start-up."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        factories = list(pool.map(lambda _: open_database(empty_database_url), range(4)))
    with factories[0]() as session:
        from sqlalchemy import text

        head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_duplicate_router_versions_are_merged_before_the_unique_index(empty_database_url):
    """0017: versions stored twice by overlapping retrains (the same owner and version) keep one row: the serving
    one, else the oldest; other owners' rows with the same version stay."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    engine = make_engine(empty_database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0015")
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'acme', CURRENT_TIMESTAMP)"))
        for tenant, version, serving in ((None, "v1", False), (None, "v1", True), (None, "v1", False),
                                         ("t1", "v1", False), ("t1", "v1", False), (None, "v2", False)):
            conn.execute(text("INSERT INTO router_versions (tenant_id, router, version, path, decision, created_at,"
                              " serving) VALUES (:t, 'linear', :v, '/r', 'd', CURRENT_TIMESTAMP, :s)"),
                         {"t": tenant, "v": version, "s": serving})
    migrate(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, tenant_id, version, serving FROM router_versions ORDER BY id")).all()
    assert [(r.id, r.tenant_id, r.version, bool(r.serving)) for r in rows] == [
        (2, None, "v1", True), (4, "t1", "v1", False), (6, None, "v2", False)]
    engine.dispose()
