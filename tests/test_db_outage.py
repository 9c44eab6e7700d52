"""A database restart and an outage in the middle of a job's calls, on a PostgreSQL of the test's own: the
answers that came back while it was down are kept and written once it is back, the other calls keep running,
and nothing is lost or billed twice."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import make_settings
from jobs_helpers import server_stats, submit, write_batch
from sqlalchemy import create_engine, text

from routeyard.states import JobStatus
from routeyard.testing.services import PrivatePostgres
from worker.embedded import run_embedded

pytestmark = pytest.mark.slow  # a job of 400 calls through a restart and a 5 s outage


def succeeded(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM items WHERE status = 'succeeded'")).scalar() or 0
    except Exception:  # down right now: not yet
        return 0
    finally:
        engine.dispose()


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_database_restart_and_outage_lose_no_answer_and_bill_none_twice(loopback, tmp_path):
    loopback.config.latency_scale = 10.0  # about 0.3 s a call: the job outlives both faults
    n = 400
    with PrivatePostgres() as pg:
        settings = make_settings(tmp_path / "home", pg.url, loopback, db_retry_s=120.0)
        sf, submitted = submit(settings, write_batch(tmp_path / "in.jsonl", [f"outage prompt {i}" for i in range(n)]))
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["summary"] = run_embedded(sf, settings, submitted.job_id)
            except BaseException as exc:  # the assertion below reports it
                outcome["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        wait_until(lambda: succeeded(pg.url) >= 50, 120, "50 answers")
        pg.restart(mode="immediate")  # a crash: every connection is cut mid-statement
        wait_until(lambda: succeeded(pg.url) >= 150, 120, "150 answers")
        pg.stop()
        time.sleep(5.0)  # an outage: answers keep coming back and wait to be written
        pg.start()
        runner.join(300)
        assert "error" not in outcome, repr(outcome.get("error"))
        summary = outcome["summary"]
        assert summary.status == JobStatus.COMPLETED and summary.counts == {"succeeded": n}
    answered = [row["answered"] for row in server_stats(loopback.base_url)["calls"]]
    assert len(answered) == n and set(answered) == {1}, "an answer was lost and its prompt called (billed) again"
