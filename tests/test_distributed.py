"""Distributed mode on real parts: Celery worker processes, Redis, PostgreSQL, the HTTP API in its own
process, and the loopback model server misbehaving. Workers are killed with SIGKILL, Redis is restarted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import STRONG, TEST_KEY, WEAK
from jobs_helpers import server_stats
from sqlalchemy import func, select, text

from db.models import Item
from db.session import open_database
from jobs.services.tenants import create_tenant
from routers.registry import DEFAULT_ROUTER
from routeyard.testing import services
from routeyard.testing.services import free_port

pytestmark = pytest.mark.slow  # worker, beat and API processes against real PostgreSQL and Redis

ROOT = Path(__file__).resolve().parent.parent


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    """routeyard.testing.services.wait_for, failing the test (an AssertionError, so callers can dump logs)."""
    return services.wait_for(check, timeout, what, interval, error=AssertionError)


class Cluster:
    """Processes started with one environment: api, workers, beat. Their output goes to files for failures."""

    def __init__(self, env: dict, logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, []

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen([sys.executable, *args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def worker(self, name: str) -> subprocess.Popen:
        return self.spawn(name, "-m", "jobs.cli", "worker", "--pool", "threads", "--concurrency", "2")

    def beat(self) -> subprocess.Popen:
        return self.spawn("beat", "-m", "celery", "-A", "jobs.periodic", "beat", "-l", "INFO",
                          "--schedule", str(self.logs / "beat-schedule"))

    def api(self, port: int) -> subprocess.Popen:
        proc = self.spawn("api", "-m", "jobs.cli", "api", "--port", str(port))
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/healthz"), 60, "the API to start")
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def dump(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def cluster(tmp_path, postgres_url, loopback):
    redis = services.PrivateRedis().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
    env.update(
        PYTHONPATH=str(ROOT), ROUTEYARD_HOME=str(tmp_path / "home"), ROUTEYARD_DATABASE_URL=postgres_url,
        ROUTEYARD_BROKER_URL=redis.url, ROUTEYARD_STRONG_BASE_URL=loopback.base_url,
        ROUTEYARD_WEAK_BASE_URL=loopback.base_url, ROUTEYARD_STRONG_MODEL=STRONG, ROUTEYARD_WEAK_MODEL=WEAK,
        ROUTEYARD_STRONG_API_KEY=TEST_KEY, ROUTEYARD_WEAK_API_KEY=TEST_KEY, ROUTEYARD_CONCURRENCY="16",
        ROUTEYARD_REQUEST_TIMEOUT_S="1.0", ROUTEYARD_MAX_RETRIES="6", ROUTEYARD_LEASE_S="8",
        ROUTEYARD_VISIBILITY_TIMEOUT_S="10", ROUTEYARD_STALL_S="6", ROUTEYARD_RECONCILE_EVERY_S="2",
        ROUTEYARD_COMPLETE_BATCH_SIZE="25",
    )
    (tmp_path / "logs").mkdir()
    c = Cluster(env, tmp_path / "logs")
    c.redis, c.database_url = redis, postgres_url
    yield c
    c.stop()
    redis.close()


def fire_due_schedule(cluster: Cluster, sf, timeout: float) -> str:
    """Make the stored schedule due (as if stored two hours ago), start a worker and beat, and wait for the
    schedule's first result (the cluster's logs are printed if it never comes)."""
    with sf() as session:
        session.execute(text("UPDATE schedules SET created_at = created_at - interval '2 hours'"))
        session.commit()
    try:
        cluster.worker("worker")
        cluster.beat()

        def fired():
            with sf() as session:
                return session.execute(text("SELECT last_result FROM schedules")).scalar()

        return wait_for(fired, timeout, "beat to fire the schedule and the worker to finish it")
    except AssertionError:
        print(cluster.dump())
        raise


def batch_file(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"messages": [{"role": "user", "content": f"Distributed prompt {i}"}]}}) + "\n")
    return path


def submit_over_http(base: str, key: str, path: Path, fraction: float = 0.3) -> str:
    with path.open("rb") as f:
        r = httpx.post(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}", "Idempotency-Key": path.name},
                       files={"file": (path.name, f, "application/jsonl")},
                       data={"strong_fraction": str(fraction), "router": "random"}, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def tenant_and_api(cluster: Cluster) -> tuple:
    """A tenant and the API serving it: (session factory, the tenant's key, the API's base URL)."""
    sf = open_database(cluster.database_url)
    _, key = create_tenant(sf, "acme")
    port = free_port()
    cluster.api(port)
    return sf, key, f"http://127.0.0.1:{port}"


def wait_completed(base: str, key: str, job_id: str, what: str) -> None:
    wait_for(lambda: httpx.get(f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
             .json()["status"] == "completed", 300, what, interval=1)


def succeeded(sf) -> int:
    with sf() as session:
        return session.scalar(select(func.count()).where(Item.status == "succeeded"))


def assert_exactly_once(sf, base: str, key: str, job_id: str, n: int, loopback) -> None:
    with sf() as session:
        rows = list(session.scalars(select(Item).where(Item.job_id == job_id)))
    assert len(rows) == n and {r.status for r in rows} == {"succeeded"}
    assert sum(r.tier == "strong" for r in rows) == round(0.3 * n)
    spend = httpx.get(f"{base}/v1/jobs/{job_id}/spend", headers={"Authorization": f"Bearer {key}"}).json()
    assert spend["calls"] == n
    assert spend["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
    answered = {row["prompt"] for row in server_stats(loopback.base_url)["calls"] if row["answered"] >= 1}
    assert {r.prompt for r in rows} <= answered


def test_a_thousand_items_survive_a_killed_worker_and_a_flaky_model_server(cluster, loopback, tmp_path):
    loopback.config.latency_scale = 2.0
    loopback.config.error_rate, loopback.config.timeout_rate, loopback.config.hang_s = 0.05, 0.01, 2.0
    sf, key, base = tenant_and_api(cluster)
    try:
        first = cluster.worker("worker-a")
        cluster.beat()
        job_id = submit_over_http(base, key, batch_file(tmp_path / "big.jsonl", 1000))
        wait_for(lambda: succeeded(sf) >= 200, 180, "200 items to finish on worker A")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        with sf() as session:
            done_at_kill = set(session.scalars(select(Item.prompt).where(Item.status == "succeeded")))
        # Requests the server has had for each prompt. Not "answered once": a request the server answered late,
        # after the client's 1 s timeout (a loaded machine), is answered twice by the client's own retry.
        sent_at_kill = {row["prompt"]: row["n"] for row in server_stats(loopback.base_url)["calls"]}
        assert len(done_at_kill) < 1000, "worker A finished the whole job before it could be killed"
        cluster.worker("worker-b")
        wait_completed(base, key, job_id, "the job to complete on worker B")
    except AssertionError:
        print(cluster.dump())
        raise
    assert_exactly_once(sf, base, key, job_id, 1000, loopback)
    sent = {row["prompt"]: row["n"] for row in server_stats(loopback.base_url)["calls"]}
    assert all(sent[p] == sent_at_kill[p] for p in done_at_kill), "an item finished before the kill was called again"
    status = httpx.get(f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
    assert status["counts"] == {"succeeded": 1000}


def test_a_job_completes_when_redis_restarts_mid_job(cluster, loopback, tmp_path):
    loopback.config.latency_scale = 4.0
    sf, key, base = tenant_and_api(cluster)
    try:
        cluster.worker("worker")
        cluster.beat()
        job_id = submit_over_http(base, key, batch_file(tmp_path / "restart.jsonl", 400))
        wait_for(lambda: succeeded(sf) >= 60, 180, "60 items to finish")
        cluster.redis.stop()  # queued tasks are lost with it: no persistence
        time.sleep(2)
        cluster.redis.start()
        wait_completed(base, key, job_id, "the job to complete after the restart")
    except AssertionError:
        print(cluster.dump())
        raise
    assert_exactly_once(sf, base, key, job_id, 400, loopback)
    # The queued tasks were lost with Redis; the reconciler saw the broker's queues gone (or, at the latest,
    # the job stalled) and re-enqueued its work.
    log = (tmp_path / "logs" / "worker.log").read_text()
    assert "the broker lost its queues" in log or "stalled; re-enqueueing" in log


def test_beat_fires_a_stored_retrain_schedule(cluster, tmp_path, gsm8k):
    """The schedule is stored first (it survives restarts: it lives in PostgreSQL), then beat and a worker start;
    beat finds it due and the worker retrains and records a router version with its promotion decision."""
    train, test = gsm8k
    data, heldout = tmp_path / "data.jsonl", tmp_path / "heldout.jsonl"
    for path, rows in ((data, train[:200]), (heldout, test[:100])):
        path.write_text("".join(json.dumps({"prompt": o.prompt, "strong": o.strong, "weak": o.weak}) + "\n"
                                for o in rows))
    env = cluster.env | {"ROUTEYARD_SCHEDULE_POLL_S": "1", "ROUTEYARD_DEFAULT_ROUTER": "random"}
    cluster.env = env
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "schedule", "retrain", "--every", "3600", "--data",
                          str(data), "--heldout", str(heldout), "--margin", "0.0"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    sf = open_database(cluster.database_url)
    result = fire_due_schedule(cluster, sf, 240)
    assert "promoted" in result, result  # the default router, trained on real outcomes, beats random serving now
    with sf() as session:
        versions = session.execute(text("SELECT router, serving, decision FROM router_versions")).all()
    assert len(versions) == 1 and versions[0].router == DEFAULT_ROUTER and versions[0].serving
    # A long-running process's log says when each thing happened (the task lines among them).
    worker_log = (cluster.logs / "worker.log").read_text()
    stamped = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO celery\.app\.trace: Task routeyard\.scheduled_retrain"
    assert re.search(stamped, worker_log, re.M), worker_log[-2000:]


def test_the_strong_share_runs_as_a_provider_batch_polled_by_beat(cluster, loopback, tmp_path):
    """Distributed mode, the front and back of the Batch API: the SDK submits to Routeyard's /v1/batches; the
    workers route, call the weak share directly and send the strong share as a provider batch; beat polls it
    and merges it. A worker killed while the provider holds the batch loses nothing."""
    import openai

    from db.models import ProviderBatch
    from routeyard.testing.loopback_batches import BatchBehaviour

    loopback.config.batches = BatchBehaviour(delay_s=3.0)
    cluster.env.update(ROUTEYARD_STRONG_MODE="batch", ROUTEYARD_BATCH_POLL_S="0.5", ROUTEYARD_BATCH_POLL_MAX_S="1")
    sf, key, base = tenant_and_api(cluster)
    try:
        first = cluster.worker("worker-a")
        cluster.beat()
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key)
        uploaded = client.files.create(file=batch_file(tmp_path / "b.jsonl", 1000).open("rb"), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"strong_fraction": "0.3",
                                                                          "router": "random"})

        def submitted() -> bool:
            with sf() as session:
                return session.scalar(select(func.count()).where(ProviderBatch.provider_batch_id.is_not(None))) > 0

        wait_for(submitted, 120, "the provider batch")
        os.killpg(first.pid, signal.SIGKILL)
        cluster.worker("worker-b")
        wait_for(lambda: client.batches.retrieve(batch.id).status == "completed", 180, "the batch to complete",
                 interval=1)
    except Exception:
        print(cluster.dump())
        raise
    done = client.batches.retrieve(batch.id)
    assert done.request_counts.completed == 1000 and done.request_counts.failed == 0
    with sf() as session:
        rows = list(session.scalars(select(Item).where(Item.job_id == batch.id)))
        batches = session.scalars(select(ProviderBatch)).all()
    strong = [r for r in rows if r.tier == "strong"]
    assert len(strong) == 300 and all(r.provider_batch_id is not None for r in strong)
    stats = server_stats(loopback.base_url)
    assert len(batches) == 1 and stats["batches_created"] == 1
    # The strong share went once, through the provider batch. Weak items the killed worker had in flight (its
    # 16 slots and what it had claimed for them) are called again, as any direct call cut off by a kill -9.
    strong_calls = [c for c in stats["calls"] if c["model"] == STRONG]
    assert len(strong_calls) == 300 and all(c["n"] == 1 for c in strong_calls)
    weak_calls = [c for c in stats["calls"] if c["model"] == WEAK]
    assert len(weak_calls) == 700 and sum(c["n"] for c in weak_calls) <= 700 + 2 * 16
