"""Faults against a running job, on real parts: two Celery workers, beat, the HTTP API, Redis and PostgreSQL of
this benchmark's own (throwaway servers on free ports: the shared test servers are never touched), and the
loopback model server answering 5% of calls with 429/500/503 and letting 1% hang past the client's timeout.

One job per fault, submitted over HTTP; the fault strikes once a share of the items has finished:
  worker-kill       SIGKILL one of the two workers
  redis-restart     Redis stopped and started again (no persistence: queued tasks are lost)
  pg-restart        PostgreSQL crashed (immediate stop) and started again
  pg-outage-30s     PostgreSQL down for 30 s
  api-kill-upload   the API SIGKILLed while a client uploads the batch; the client uploads again (same key)
Reported per fault: items lost (no result when the job ends), finished items called again, in-flight items
billed twice (answered more than once), and seconds from the fault to the job's completion.

Recovery settings are Routeyard's defaults (lease, visibility timeout, stall, reconcile, heartbeat), except the
request timeout (10 s, so the 1% of hung calls retry within the run; the default is 120 s).

    python benchmarks/faults.py [--items 1000] [--faults worker-kill,redis-restart,...]
Writes benchmarks/results/faults.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
# Children import the checkout first and keep whatever PYTHONPATH the caller set (packages installed with --target).
CHILD_PYTHONPATH = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, str(ROOT))
from db.session import open_database  # noqa: E402
from jobs.services.tenants import create_tenant  # noqa: E402
from routeyard.testing.loopback import LoopbackConfig, LoopbackServer, ModelProfile  # noqa: E402
from routeyard.testing.services import PrivatePostgres, PrivateRedis, free_port, wait_for  # noqa: E402

STRONG, WEAK, KEY = "gpt-4-1106-preview", "mixtral-8x7b-instruct", "sk-bench-faults-0123456789"
FAULTS = ("worker-kill", "redis-restart", "pg-restart", "pg-outage-30s", "api-kill-upload")


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, *args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def worker(self, name: str) -> None:
        self.spawn(name, "-m", "jobs.cli", "worker", "--pool", "threads", "--concurrency", "4")

    def api(self, port: int) -> None:
        self.spawn("api", "-m", "jobs.cli", "api", "--port", str(port))
        wait(lambda: _up(f"http://127.0.0.1:{port}/healthz"), 90, "the API")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait(check: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    return wait_for(check, timeout, what, interval)


def batch_lines(tag: str, n: int) -> Iterator[bytes]:
    for i in range(n):
        yield (json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"messages": [{"role": "user", "content": f"{tag} prompt {i}"}]}}) + "\n").encode()


def query(url: str, sql: str, **params: object) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    except Exception:  # the database is down (the fault): no answer now
        return []
    finally:
        engine.dispose()


def counts(url: str, job_id: str) -> dict[str, int]:
    return dict(query(url, "SELECT status, count(*) FROM items WHERE job_id = :j GROUP BY status", j=job_id))


def job_status(url: str, job_id: str) -> str | None:
    rows = query(url, "SELECT status FROM jobs WHERE id = :j", j=job_id)
    return rows[0][0] if rows else None


def stats(server: LoopbackServer, tag: str) -> dict[str, tuple[int, int]]:
    """(calls, answered) per prompt of this fault's job."""
    rows = httpx.get(server.base_url.removesuffix("/v1") + "/_stats", timeout=30).json()["calls"]
    out: dict[str, tuple[int, int]] = {}
    for row in rows:
        if row["prompt"].startswith(tag + " "):
            calls, answered = out.get(row["prompt"], (0, 0))
            out[row["prompt"]] = (calls + row["n"], answered + row["answered"])
    return out


class SlowFile(io.RawIOBase):
    """An upload that arrives slowly, as from a far client: `chunk` bytes every `delay_s`."""

    def __init__(self, data: bytes, chunk: int = 16_384, delay_s: float = 0.05) -> None:
        self.data, self.pos, self.chunk, self.delay_s = data, 0, chunk, delay_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # a writable buffer, as io.RawIOBase passes it
        time.sleep(self.delay_s)
        piece = self.data[self.pos : self.pos + min(self.chunk, len(buffer))]
        buffer[: len(piece)] = piece
        self.pos += len(piece)
        return len(piece)


def submit(base: str, key: str, tag: str, n: int, body: io.RawIOBase | None = None) -> httpx.Response:
    content = b"".join(batch_lines(tag, n)) if body is None else body
    return httpx.post(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}", "Idempotency-Key": tag},
                      files={"file": (f"{tag}.jsonl", content, "application/jsonl")},
                      data={"strong_fraction": "0.3", "router": "random"}, timeout=120)


def run_fault(fault: str, n: int, cluster: Cluster, pg: PrivatePostgres, redis: PrivateRedis,
              server: LoopbackServer, base: str, api_port: int, key: str, at_share: float = 0.3) -> dict:
    tag = f"{fault}-{int(time.time())}"
    url = pg.url
    if fault == "api-kill-upload":
        return api_kill_upload(tag, n, cluster, url, server, base, api_port, key)
    r = submit(base, key, tag, n)
    r.raise_for_status()
    job_id = r.json()["job_id"]
    wait(lambda: counts(url, job_id).get("succeeded", 0) >= at_share * n, 600, f"{at_share:.0%} of the items")
    done_before = {row[0] for row in query(url, "SELECT prompt FROM items WHERE job_id = :j AND status IN "
                                                "('succeeded', 'failed')", j=job_id)}
    calls_before = stats(server, tag)
    fault_at = time.monotonic()
    if fault == "worker-kill":
        cluster.kill("worker-a")
    elif fault == "redis-restart":
        redis.restart(down_s=2.0)
    elif fault == "pg-restart":
        pg.restart(mode="immediate")
    elif fault == "pg-outage-30s":
        pg.stop()
        time.sleep(30.0)
        pg.start()
    wait(lambda: job_status(url, job_id) == "completed", 1200, "the job to complete", interval=0.5)
    recovery_s = time.monotonic() - fault_at
    if fault == "worker-kill":
        cluster.worker("worker-a")  # the next fault starts with two workers again
    return measure(fault, tag, n, url, job_id, server, done_before, calls_before, recovery_s)


def measure(fault: str, tag: str, n: int, url: str, job_id: str, server: LoopbackServer, done_before: set[str],
            calls_before: dict[str, tuple[int, int]], recovery_s: float) -> dict:
    final = counts(url, job_id)
    after = stats(server, tag)
    again = sum(1 for p in done_before if after.get(p, (0, 0))[0] > calls_before.get(p, (0, 0))[0])
    twice = sum(1 for _, answered in after.values() if answered > 1)
    unanswered = query(url, "SELECT coalesce(sum(unanswered_attempts), 0) FROM items WHERE job_id = :j", j=job_id)
    return {"fault": fault, "items": n, "items_lost": n - final.get("succeeded", 0) - final.get("failed", 0),
            "failed": final.get("failed", 0), "finished_items_called_again": again, "billed_twice": twice,
            "seconds_fault_to_completion": round(recovery_s, 1),
            "unanswered_requests": int(unanswered[0][0]) if unanswered else None}


def api_kill_upload(tag: str, n: int, cluster: Cluster, url: str, server: LoopbackServer, base: str, port: int,
                    key: str) -> dict:
    """The client streams the batch slowly; the API is SIGKILLed halfway; the client uploads again."""
    outcome: dict[str, object] = {}

    data = b"".join(batch_lines(tag, n))
    slow = SlowFile(data)

    def upload() -> None:
        try:
            outcome["response"] = submit(base, key, tag, n, slow)
        except httpx.HTTPError as exc:
            outcome["error"] = type(exc).__name__

    client = threading.Thread(target=upload)
    client.start()
    wait(lambda: slow.pos >= len(data) // 2, 120, "half the upload")
    fault_at = time.monotonic()
    cluster.kill("api")
    client.join(60)
    stored = query(url, "SELECT count(*) FROM jobs WHERE idempotency_key = :k", k=tag)
    cluster.api(port)
    r = submit(base, key, tag, n)
    r.raise_for_status()
    job_id = r.json()["job_id"]
    wait(lambda: job_status(url, job_id) == "completed", 1200, "the job to complete", interval=0.5)
    result = measure("api-kill-upload", tag, n, url, job_id, server, set(), {}, time.monotonic() - fault_at)
    result["first_upload"] = outcome.get("error") or getattr(outcome.get("response"), "status_code", None)
    result["jobs_stored_by_the_killed_upload"] = stored[0][0] if stored else None
    return result


def write(results: list[dict], args: argparse.Namespace, out: Path) -> None:
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "items_per_job": args.items, "workers": 2, "worker_threads": 4,
            "request_timeout_s": 10, "error_rate": 0.05, "timeout_rate": 0.01,
            "note": "Routeyard's default recovery settings; request timeout 10 s (default 120)"}
    (out / "faults.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [f"# Faults ({meta['date']}, {meta['cpus']} CPUs, {args.items} items a job, 2 workers)", "",
             "| fault | items lost | finished items called again | in-flight items billed twice | "
             "seconds fault -> completion | failed items | unanswered requests |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['fault']} | {r['items_lost']} | {r['finished_items_called_again']} | {r['billed_twice']} "
                     f"| {r['seconds_fault_to_completion']} | {r['failed']} | {r['unanswered_requests']} |")
    for r in results:
        if "first_upload" in r:
            lines += ["", f"api-kill-upload: the killed upload got {r['first_upload']}; jobs it stored: "
                          f"{r['jobs_stored_by_the_killed_upload']}; the second upload (same key) ran the job."]
    lines += ["", meta["note"]]
    (out / "faults.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    config = LoopbackConfig(models={STRONG: ModelProfile(first_token_ms=150, ms_per_token=1.0, answer_words=60),
                                    WEAK: ModelProfile(first_token_ms=80, ms_per_token=0.5, answer_words=40)},
                            api_key=KEY, error_rate=0.05, timeout_rate=0.01, hang_s=15.0)
    work = Path(tempfile.mkdtemp(prefix="routeyard-faults-"))
    results: list[dict] = []
    with PrivatePostgres() as pg, PrivateRedis() as redis, LoopbackServer(config) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
        env.update(PYTHONPATH=CHILD_PYTHONPATH, ROUTEYARD_HOME=str(work / "home"), ROUTEYARD_DATABASE_URL=pg.url,
                   ROUTEYARD_BROKER_URL=redis.url, ROUTEYARD_STRONG_BASE_URL=server.base_url,
                   ROUTEYARD_WEAK_BASE_URL=server.base_url, ROUTEYARD_STRONG_MODEL=STRONG, ROUTEYARD_WEAK_MODEL=WEAK,
                   ROUTEYARD_STRONG_API_KEY=KEY, ROUTEYARD_WEAK_API_KEY=KEY, ROUTEYARD_REQUEST_TIMEOUT_S="10")
        sf = open_database(pg.url)
        _, key = create_tenant(sf, "bench")
        sf.kw["bind"].dispose()
        cluster = Cluster(env, work)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        try:
            cluster.api(port)
            cluster.worker("worker-a")
            cluster.worker("worker-b")
            cluster.spawn("beat", "-m", "celery", "-A", "jobs.periodic", "beat", "-l", "INFO", "--schedule",
                          str(work / "beat-schedule"))
            for fault in faults:
                print(f"{fault} ...", flush=True)
                result = run_fault(fault, args.items, cluster, pg, redis, server, base, port, key)
                print(json.dumps(result), flush=True)
                results.append(result)
                write(results, args, args.out)
        finally:
            cluster.stop()
    print(f"logs in {work}")


if __name__ == "__main__":
    main()
