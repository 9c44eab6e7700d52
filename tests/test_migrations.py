from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from db.models import Base
from db.session import MIGRATIONS_DIR, make_engine, migrate, open_database


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
