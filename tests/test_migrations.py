from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.models import Base
from db.session import make_engine, migrate, open_database


def test_migrations_build_exactly_the_models_and_rerun_as_a_no_op(database_url):
    open_database(database_url)
    engine = make_engine(database_url)
    migrate(engine)  # a second start changes nothing
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert {"jobs", "items", "rejected_lines", "alembic_version"} <= set(inspect(conn).get_table_names())
    engine.dispose()


def test_workers_starting_together_migrate_a_fresh_database_once(database_url):
    """Task threads (and worker processes) open the database at the same moment on start-up."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        factories = list(pool.map(lambda _: open_database(database_url), range(4)))
    with factories[0]() as session:
        from sqlalchemy import text

        assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0010"
