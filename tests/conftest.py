"""Shared fixtures. PostgreSQL and Redis are real servers (tests/services.sh starts them; `make test` runs it)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from db.session import make_engine, migrate
from routeyard.settings import Price, Settings
from routeyard.testing.loopback import LoopbackConfig, LoopbackServer, ModelProfile

ROOT = Path(__file__).resolve().parent.parent
# The shared data is read where it lies, never copied: ROUTEYARD_DATA, else ../shared/data beside the checkout,
# else the workplace's /work/shared/data (a clean clone for CI may live elsewhere, e.g. under /tmp).
DATA_CANDIDATES = [Path(p) for p in (os.environ.get("ROUTEYARD_DATA"),) if p] + [
    ROOT.parent / "shared" / "data", Path("/work/shared/data")]
PG_URL = os.environ.get("ROUTEYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/postgres")
REDIS_URL = os.environ.get("ROUTEYARD_TEST_REDIS_URL", "redis://127.0.0.1:56379/0")
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct"
TEST_KEY = "sk-test-routeyard-SECRET-0123456789"
FAST_MODELS = {STRONG: ModelProfile(first_token_ms=20, ms_per_token=0.2, answer_words=60),
               WEAK: ModelProfile(first_token_ms=10, ms_per_token=0.1, answer_words=40)}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    for candidate in DATA_CANDIDATES:
        if (candidate / "routellm-evals").is_dir():
            return candidate / "routellm-evals"
    pytest.fail(f"shared data not found in {[str(c) for c in DATA_CANDIDATES]}; set ROUTEYARD_DATA to it")


@pytest.fixture(scope="session")
def gsm8k(data_dir):
    """GSM8K outcomes split once: 800 prompts to train on, the other ~500 held out."""
    import numpy as np

    from routers.data import read_routellm_evals

    rows = read_routellm_evals(data_dir, ("gsm8k",))
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i] for i in order[:800]], [rows[i] for i in order[800:]]


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the session: each prompt is embedded (and the ONNX encoder exported) once however
    many tests use it. Under pytest-xdist (`make test-fast` runs on several processes) the workers share one, in
    the run's base directory: their writes are atomic."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "shared-cache"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("cache")


def _postgres_admin_url() -> str:
    try:
        with create_engine(PG_URL).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({type(exc).__name__}). Start it with "
                    "`bash tests/services.sh start` (`make test` does) or set ROUTEYARD_TEST_POSTGRES_URL.")
    return PG_URL


def _create_postgres_database(template: str | None = None) -> str:
    admin = create_engine(_postgres_admin_url(), isolation_level="AUTOCOMMIT")
    name = f"routeyard_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return name


def _drop_postgres_database(name: str) -> None:
    admin = create_engine(_postgres_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _postgres_url_of(name: str) -> str:
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def _migrated_postgres_template() -> Iterator[str]:
    """One database migrated to head per session: copying it (CREATE DATABASE ... TEMPLATE) costs a third of
    migrating each test's database from scratch, which was most of the fast lane's setup time."""
    name = _create_postgres_database()
    engine = make_engine(_postgres_url_of(name))
    migrate(engine)
    engine.dispose()  # a template must have no open connection while it is copied
    yield name
    _drop_postgres_database(name)


@pytest.fixture(scope="session")
def _migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "routeyard.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    with engine.connect() as conn:  # fold the WAL into the file so a plain copy is the whole database
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture
def postgres_url(_migrated_postgres_template: str) -> Iterator[str]:
    """A database of its own on the real server, already at the migrations' head, dropped afterwards."""
    name = _create_postgres_database(_migrated_postgres_template)
    yield _postgres_url_of(name)
    _drop_postgres_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at the migrations' head (opening it still runs the migrations, which then do nothing)."""
    if request.param == "sqlite":
        target = tmp_path / "routeyard.db"
        shutil.copyfile(request.getfixturevalue("_migrated_sqlite_template"), target)
        return f"sqlite:///{target}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no migration has touched, for the tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'routeyard.db'}"
        return
    name = _create_postgres_database()
    yield _postgres_url_of(name)
    _drop_postgres_database(name)


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    with LoopbackServer(LoopbackConfig(models=dict(FAST_MODELS), api_key=TEST_KEY, hang_s=5.0)) as server:
        yield server


def make_settings(home: Path, database_url: str, server: LoopbackServer, embedding_cache: Path | None = None,
                  **overrides: object) -> Settings:
    settings = Settings(home=home, database_url=database_url, strong_base_url=server.base_url,
                        weak_base_url=server.base_url, strong_model=STRONG, weak_model=WEAK,
                        strong_api_key=SecretStr(TEST_KEY), weak_api_key=SecretStr(TEST_KEY), concurrency=8,
                        max_retries=3, request_timeout_s=10.0, _env_file=None, **overrides)
    if embedding_cache is not None:  # share embeddings across tests: cache_dir is home/cache
        (home / "cache").parent.mkdir(parents=True, exist_ok=True)
        if not (home / "cache").exists():
            (home / "cache").symlink_to(embedding_cache, target_is_directory=True)
    return settings


def judge_settings(home: Path, database_url: str, server: LoopbackServer, judge_model: str,
                   embedding_cache: Path | None = None, **overrides: object) -> Settings:
    """make_settings, with the loopback also answering `judge_model` as the judge (priced: a made-up model has no
    price in the maintained list, and a judge whose spend cannot be counted is refused)."""
    server.config.judge_models = {judge_model}
    return make_settings(home, database_url, server, embedding_cache, judge_base_url=server.base_url,
                         judge_model=judge_model, judge_api_key=SecretStr(TEST_KEY),
                         pricing={judge_model: Price(input=5.0, output=15.0)}, **overrides)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, loopback: LoopbackServer, embedding_cache: Path) -> Settings:
    return make_settings(tmp_path / "home", database_url, loopback, embedding_cache)
