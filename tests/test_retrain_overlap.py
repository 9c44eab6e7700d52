"""Overlapping retrains of one owner (a schedule firing again while a long retrain runs): one runs, the other
does nothing and says why; a version already stored is never stored twice; a holder that died frees its
claim. On SQLite and PostgreSQL (the `settings` fixture runs each test on both)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import RetrainLock, RouterVersion
from db.session import open_database
from jobs.periodic import run_scheduled_retrain
from jobs.services import retrain as service
from jobs.services.retrain import RetrainRunning, one_retrain_at_a_time, retrain
from jobs.services.schedules import add_schedule
from routers.data import outcome_to_preference

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(settings, gsm8k):
    """`random` serving and trained (no encoder): each retrain takes milliseconds and yields the same version."""
    settings = settings.model_copy(update={"default_router": "random"})
    train, test = gsm8k
    return (open_database(settings.resolved_database_url), settings, test[:300],
            [outcome_to_preference(o) for o in train[:50]])


def versions(sf) -> list[RouterVersion]:
    with sf() as session:
        return list(session.scalars(select(RouterVersion)))


def test_two_retrains_at_once_run_one_and_store_one_version(setup, monkeypatch):
    sf, settings, heldout, rows = setup
    train = service.train_router

    def slow_train(*args, **kwargs):  # a real retrain takes minutes: long enough for the other call to come
        time.sleep(1.5)
        return train(*args, **kwargs)

    monkeypatch.setattr(service, "train_router", slow_train)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def call() -> None:
        start.wait()
        try:
            outcomes.append(retrain(sf, settings, "random", [], heldout, extra=rows, tenant_id=None))
        except RetrainRunning as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [o for o in outcomes if isinstance(o, RetrainRunning)]
    assert len(outcomes) == 2 and len(refused) == 1, outcomes
    assert "already running" in str(refused[0]) and "the global default" in str(refused[0])
    assert len(versions(sf)) == 1
    with sf() as session:
        assert session.scalar(select(RetrainLock)) is None  # released when the retrain ended


def test_the_same_version_trained_again_is_one_row(setup, tmp_path):
    sf, settings, heldout, rows = setup
    first = retrain(sf, settings, "random", [], heldout, extra=rows, tenant_id=None)
    again = retrain(sf, settings, "random", [], heldout, margin=-1.0, extra=rows, tenant_id=None)  # promoted
    assert again.version == first.version and again.path == first.path
    [row] = versions(sf)
    assert row.serving and "trained again" in row.decision
    assert sorted(p.name for p in (settings.home / "routers").iterdir()) == [row.path.rsplit("/", 1)[-1]]


def test_a_claim_whose_holder_died_is_taken_over(setup):
    sf, settings, heldout, rows = setup
    with sf() as session:  # a retrain whose process was killed: its runner stopped beating and was forgotten
        session.add(RetrainLock(owner="", token="dead", runner_id="gone:4242:deadbeef"))
        session.commit()
    retrain(sf, settings, "random", [], heldout, extra=rows, tenant_id=None)
    assert len(versions(sf)) == 1


def test_a_schedule_firing_while_its_retrain_runs_is_skipped_not_failed(setup, caplog):
    sf, settings, _, _ = setup
    schedule = add_schedule(sf, "retrain", {"tenant": "global", "router": "random"}, every_s=60)
    with one_retrain_at_a_time(sf, settings, None):  # the firing before, still running
        message = run_scheduled_retrain(sf, settings, schedule, {"tenant": "global", "router": "random"})
    assert message.startswith("global: skipped: a retrain of the global default is already running"), message
    assert "failed" not in message and "skipped" in caplog.text
    assert versions(sf) == []


def _env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
    return {**env, "ROUTEYARD_DATABASE_URL": settings.resolved_database_url, "ROUTEYARD_HOME": str(settings.home),
            "ROUTEYARD_DEFAULT_ROUTER": "random", "PYTHONPATH": str(ROOT)}


HOLD = """
import sys, time
from db.session import open_database
from jobs.services.retrain import one_retrain_at_a_time
from routeyard.settings import Settings
settings = Settings()
sf = open_database(settings.resolved_database_url)
with one_retrain_at_a_time(sf, settings, None):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow  # two Python processes start (a few seconds each)
def test_across_processes_a_live_retrain_refuses_the_next_and_a_killed_one_frees_it(setup):
    sf, settings, heldout, rows = setup
    holder = subprocess.Popen([sys.executable, "-c", HOLD], env=_env(settings), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cli = subprocess.run([sys.executable, "-m", "jobs.cli", "retrain", "--tenant", "global", "--router",
                              "random"], env=_env(settings), capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2, cli
        assert "a retrain of the global default is already running" in cli.stderr and "Traceback" not in cli.stderr
        assert f"pid {holder.pid}" in cli.stderr
        with pytest.raises(RetrainRunning):
            retrain(sf, settings, "random", [], heldout, extra=rows, tenant_id=None)
    finally:
        holder.kill()  # kill -9: no clean release; its runner's pid is gone
        holder.wait()
    retrain(sf, settings, "random", [], heldout, extra=rows, tenant_id=None)
    assert len(versions(sf)) == 1
