"""Job throughput: Routeyard's engine against the limit, a bare asyncio loop of the openai client.

Everything runs side by side in one invocation, against one loopback model server (its own process, a fixed
per-call latency):
  bare asyncio loop at concurrency C         (the limit: nothing but HTTP calls, through chat.completions.create
                                             and, stricter, through the client's own post as the engine calls)
  embedded runner (SQLite, one process)      at concurrency C
  1 and 2 Celery workers (PostgreSQL, Redis) at C in flight per worker (ROUTEYARD_CONCURRENCY=C: the worker
                                             process's shared call slots; --task-threads completion tasks held)
for the `random` router (engine overhead only) and learned routers (cold cache: every run's prompts are new).
Throughput = items / (job finished - job created), from the database. Pre-call share = time from the job's
creation to its first call (storing, scoring, routing, the hops between tasks) / whole job. CPU time per item
is read from /proc for each process that took part (PostgreSQL: every backend of the server, which other work on
the machine may share), so a CPU-bound machine shows as such.

    python benchmarks/throughput.py [--items 1000] [--latency-ms 100] [--repeats 3] [--batch-sizes 50,10]
Needs PostgreSQL on 127.0.0.1:55432 and redis-server (bash tests/services.sh start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import httpx2
import openai
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
# Children import the checkout first and keep whatever PYTHONPATH the caller set (packages installed with --target).
CHILD_PYTHONPATH = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, str(ROOT))
from db.models import Item, Job  # noqa: E402
from db.session import open_database  # noqa: E402
from routers.data import read_routellm_evals  # noqa: E402

PG_ADMIN = os.environ.get("ROUTEYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/postgres")
DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"
CONCURRENCY = 32  # calls in flight per process (a worker's shared call slots)
TICKS = os.sysconf("SC_CLK_TCK")
SLOTS_LINE = re.compile(r"call slots: (?P<busy>[\d.]+) of \d+ busy on average over (?P<held>[\d.]+) s")


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) these processes have used so far; a process gone counts 0."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def postgres_cpu_s() -> float:
    """CPU seconds of the PostgreSQL server: its live processes, plus the backends that have exited (the
    postmaster's waited-for children), so connections that close between two readings are counted."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() not in ("postgres", "postmaster"):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
        parent = Path(f"/proc/{fields[1]}/comm")
        if not parent.exists() or parent.read_text().strip() not in ("postgres", "postmaster"):
            total += (int(fields[13]) + int(fields[14])) / TICKS  # the postmaster: its exited backends
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def prompts(n: int, tag: str) -> list[str]:
    rows = read_routellm_evals(DATA, ("gsm8k",))
    return [f"[{tag}] {rows[i % len(rows)].prompt}" for i in range(n)]


def write_batch(path: Path, texts: list[str]) -> Path:
    with path.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"max_tokens": 50, "messages": [{"role": "user", "content": t}]}}) + "\n")
    return path


async def bare_loop(base_url: str, texts: list[str], concurrency: int, lean: bool = False,
                    aiohttp: bool = False) -> float:
    """Calls and nothing else. `lean`: the client's own `post` of the JSON body, reading the JSON back (what
    worker/llm_client.py does, a third less CPU a call than `chat.completions.create` with its typed
    arguments and response model): the stricter limit. `aiohttp`: on the SDK's DefaultAioHttpClient, the
    engine's default HTTP stack (ROUTEYARD_HTTP_BACKEND): the strictest."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0,
                                http_client=openai.DefaultAioHttpClient() if aiohttp else None)
    limit = asyncio.Semaphore(concurrency)

    async def one(t: str) -> None:
        async with limit:
            if lean:
                answer = await client.post("/chat/completions", cast_to=httpx2.Response, body={
                    "model": "weak", "max_tokens": 50, "messages": [{"role": "user", "content": t}]})
                answer.json()
            else:
                await client.chat.completions.create(model="weak", max_tokens=50,
                                                     messages=[{"role": "user", "content": t}])

    start = time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    elapsed = time.perf_counter() - start
    await client.close()
    return len(texts) / elapsed


def fresh_pg_database() -> str:
    name = f"routeyard_bench_{uuid.uuid4().hex[:8]}"
    with create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def job_times(database_url: str, job_id: str) -> tuple[float, float, float]:
    """(items/s, pre-call share, calls-phase items/s) from the job's own timestamps. The calls phase runs from the
    first item's call to the last item's result: the per-item cost, without the job's fixed costs (ingest,
    scoring, routing, the hops between tasks) that a 1,000-item job makes large."""
    sf = open_database(database_url)
    with sf() as s:
        job = s.get(Job, job_id)
        created, finished = job.created_at, job.finished_at
        first_call, last_result = s.execute(select(func.min(Item.started_at), func.max(Item.finished_at))
                                            .where(Item.job_id == job_id)).one()
    # Not the job's heartbeat: it moves while calls progress (a sign of life), so it no longer marks routing.
    created, finished, first_call, last_result = [t if t.tzinfo else t.replace(tzinfo=UTC)
                                                  for t in (created, finished, first_call, last_result)]
    total = (finished - created).total_seconds()
    return (job.n_items / total, (first_call - created).total_seconds() / total,
            job.n_items / (last_result - first_call).total_seconds())


def base_env(home: Path, base_url: str, http_backend: str = "aiohttp") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
    env.update(PYTHONPATH=CHILD_PYTHONPATH, ROUTEYARD_HOME=str(home), ROUTEYARD_STRONG_BASE_URL=base_url,
               ROUTEYARD_HTTP_BACKEND=http_backend,
               ROUTEYARD_WEAK_BASE_URL=base_url, ROUTEYARD_STRONG_API_KEY="bench", ROUTEYARD_WEAK_API_KEY="bench",
               ROUTEYARD_CONCURRENCY=str(CONCURRENCY), ROUTEYARD_MAX_RETRIES="2")
    return env


def run_embedded(home: Path, base_url: str, texts: list[str], router: str,
                 http_backend: str = "aiohttp") -> tuple[float, float, float]:
    env = base_env(home, base_url, http_backend)
    db = f"sqlite:///{home / f'embedded-{uuid.uuid4().hex[:6]}.db'}"
    env["ROUTEYARD_DATABASE_URL"] = db
    batch = write_batch(home / "batch.jsonl", texts)
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "submit", str(batch), "--router", router], env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    job_id = next(w for w in out.split() if w.startswith("job_"))
    return job_times(db, job_id)


class Workers:
    def __init__(self, home: Path, base_url: str, n: int, batch_size: int, task_threads: int,
                 http_backend: str = "aiohttp") -> None:
        self.redis_port = free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--save", "", "--appendonly",
                                       "no"], stdout=subprocess.DEVNULL)
        self.database_url = fresh_pg_database()
        self.env = base_env(home, base_url, http_backend) | {"ROUTEYARD_DATABASE_URL": self.database_url,
                                               "ROUTEYARD_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                                               "ROUTEYARD_COMPLETE_BATCH_SIZE": str(batch_size)}
        time.sleep(0.5)
        open_database(self.database_url)  # migrate before workers race to
        tag = f"{n}-b{batch_size}-{http_backend}"
        self.logs = [home / f"worker{tag}-{i}.log" for i in range(n)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "jobs.cli", "worker", "--pool", "threads",
                                        "--concurrency", str(task_threads)], env=self.env, cwd=ROOT,
                                       stdout=log.open("w"), stderr=subprocess.STDOUT) for log in self.logs]
        self.workers = [p.pid for p in self.procs]
        self.read_to = [0 for _ in self.logs]
        beat_log = home / f"beat{tag}.log"
        self.procs.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "jobs.periodic", "beat",
                                            "--schedule", str(home / f"beat{tag}")], env=self.env, cwd=ROOT,
                                           stdout=beat_log.open("w"), stderr=subprocess.STDOUT))
        try:
            wait_until(lambda: all("ready" in log.read_text() for log in self.logs), 120, "workers")
        except RuntimeError:  # the caller never gets this cluster to stop, so stop what it started
            self.stop()
            raise RuntimeError(f"workers did not start; see {', '.join(map(str, self.logs))}") from None

    def run(self, home: Path, texts: list[str], router: str) -> tuple[float, float, float]:
        batch = write_batch(home / "batch.jsonl", texts)
        out = subprocess.run([sys.executable, "-m", "jobs.cli", "submit", str(batch), "--router", router, "--wait"],
                             env=self.env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        job_id = next(w for w in out.split() if w.startswith("job_"))
        return job_times(self.database_url, job_id)

    def busy_slots(self) -> float | None:
        """Mean busy call slots of a worker process while it held completion tasks, over what its logs said
        since the last look (worker/slots.py logs it whenever its slots go idle)."""
        busy = held = 0.0
        for i, log in enumerate(self.logs):
            text = log.read_text()
            for match in SLOTS_LINE.finditer(text, self.read_to[i]):
                busy += float(match["busy"]) * float(match["held"])
                held += float(match["held"])
            self.read_to[i] = len(text)
        return busy / held if held else None

    def stop(self) -> None:
        for p in [*self.procs, self.redis]:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--routers", default="random,linear", help="comma-separated router specs")
    parser.add_argument("--workers", default="1,2", help="comma-separated Celery worker counts ('' for none)")
    parser.add_argument("--batch-sizes", default="50", help="comma-separated ROUTEYARD_COMPLETE_BATCH_SIZE values")
    parser.add_argument("--task-threads", type=int, default=4, help="completion tasks a worker process holds")
    parser.add_argument("--http-backends", default="aiohttp",
                        help="comma-separated ROUTEYARD_HTTP_BACKEND values the engine runs with (aiohttp, httpx)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/throughput_<latency>ms.json")
    args = parser.parse_args()
    args.out = args.out or ROOT / "benchmarks" / "results" / f"throughput_{args.latency_ms:g}ms.json"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a terminated run still stops what it started
    load_before = os.getloadavg()

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "routeyard.testing.loopback", "--port", str(port), "--latency-ms",
                               str(args.latency_ms)], cwd=ROOT, env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH})
    base_url = f"http://127.0.0.1:{port}/v1"
    wait_until(lambda: up(f"http://127.0.0.1:{port}/_stats"), 30, "the loopback server")
    results: dict[str, list[float]] = {}
    shares: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    slots: dict[str, list[float]] = {}
    home = Path(tempfile.mkdtemp(prefix="routeyard-bench-"))
    counter = iter(range(10_000))
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    def measured(name: str, run, engine: list[int] | None, redis: int | None, cluster=None) -> None:
        """Run one configuration and record its rate and each process's CPU time per item."""
        own = time.process_time()
        children = os.times().children_user + os.times().children_system
        before = {"model server": cpu_s([server.pid]), "PostgreSQL": postgres_cpu_s(),
                  "engine": cpu_s(engine or []), "Redis": cpu_s([redis] if redis else [])}
        value = run()
        after = {"model server": cpu_s([server.pid]), "PostgreSQL": postgres_cpu_s(),
                 "engine": cpu_s(engine or []), "Redis": cpu_s([redis] if redis else [])}
        used = {k: after[k] - before[k] for k in before}
        if engine is None:  # the bare loop runs here; the embedded runner is a child process of this one
            used["engine"] = time.process_time() - own if name.startswith("bare") else (
                os.times().children_user + os.times().children_system - children)
        rate, share, calls_rate = value if isinstance(value, tuple) else (value, 0.0, value)
        busy = None
        if cluster is not None:
            time.sleep(0.5)  # the idle line follows the last task's return
            busy = cluster.busy_slots()
            if busy is not None:
                slots.setdefault(name, []).append(busy)
        results.setdefault(name, []).append(rate)
        phases.setdefault(name, []).append(calls_rate)
        shares.setdefault(name, []).append(share)
        for k, v in used.items():
            cpu.setdefault(name, {}).setdefault(k, []).append(1000 * v / args.items)
        print(f"{name:<34} {rate:8.1f} items/s  calls phase {calls_rate:6.1f}/s  pre-call share {share:5.1%}  "
              + ("" if busy is None else f"busy slots {busy:.1f}/{CONCURRENCY}  ") + "CPU ms/item "
              + ", ".join(f"{k} {1000 * v / args.items:.2f}" for k, v in used.items()), flush=True)

    backends = [b for b in args.http_backends.split(",") if b]

    def on(backend: str) -> str:
        return "" if backend == "aiohttp" else f" [{backend}]"

    def label(n: int, b: int, router: str, backend: str) -> str:
        return (f"{n} worker(s) c={n * CONCURRENCY}" + (f" b={b}" if len(batch_sizes) > 1 else "") + f" {router}"
                + on(backend))

    try:
        clusters = {(int(n), b, h): Workers(home, base_url, int(n), b, args.task_threads, h)
                    for n in args.workers.split(",") if n for b in batch_sizes for h in backends}
        for _ in range(args.repeats):  # interleaved, so drift hits every configuration alike
            for conc in (CONCURRENCY, 2 * CONCURRENCY):
                measured(f"bare asyncio c={conc}", lambda conc=conc: asyncio.run(
                    bare_loop(base_url, prompts(args.items, f"b{next(counter)}"), conc)), None, None)
                measured(f"bare asyncio post c={conc}", lambda conc=conc: asyncio.run(
                    bare_loop(base_url, prompts(args.items, f"b{next(counter)}"), conc, lean=True)), None, None)
                measured(f"bare asyncio post aiohttp c={conc}", lambda conc=conc: asyncio.run(
                    bare_loop(base_url, prompts(args.items, f"b{next(counter)}"), conc, lean=True, aiohttp=True)),
                    None, None)
            for router in args.routers.split(","):
                for h in backends:
                    measured(f"embedded c={CONCURRENCY} {router}{on(h)}", lambda router=router, h=h: run_embedded(
                        home, base_url, prompts(args.items, f"e{next(counter)}"), router, h), None, None)
                for (n, b, h), cluster in clusters.items():
                    measured(label(n, b, router, h), lambda cluster=cluster, router=router: cluster.run(
                        home, prompts(args.items, f"w{next(counter)}"), router), cluster.workers,
                        cluster.redis.pid, cluster)
    finally:
        for cluster in locals().get("clusters", {}).values():
            cluster.stop()
        server.terminate()

    summary = {name: {"median_items_per_s": statistics.median(v), "runs": v,
                      "median_calls_phase_items_per_s": statistics.median(phases[name]),
                      "calls_phase_runs": phases[name],
                      "median_pre_call_share": statistics.median(shares[name]),
                      "median_cpu_ms_per_item": {k: statistics.median(x) for k, x in cpu[name].items()},
                      "median_busy_slots_per_worker": statistics.median(slots[name]) if name in slots else None}
               for name, v in results.items()}
    for name, row in summary.items():
        conc = int(name.split("c=")[1].split()[0])
        limit = summary[f"bare asyncio c={conc}"]["median_items_per_s"]
        row["ratio_to_bare_loop"] = row["median_items_per_s"] / limit
        row["calls_phase_ratio_to_bare_loop"] = row["median_calls_phase_items_per_s"] / limit
        row["ratio_to_aiohttp_loop"] = row["median_items_per_s"] / summary[
            f"bare asyncio post aiohttp c={conc}"]["median_items_per_s"]
        row["ratio_to_lean_loop"] = row["median_items_per_s"] / summary[f"bare asyncio post c={conc}"][
            "median_items_per_s"]
    for name, row in summary.items():
        if name.startswith("2 worker(s)"):
            one = summary.get(name.replace("2 worker(s) c=", "1 worker(s) c=").replace(
                f"c={2 * CONCURRENCY}", f"c={CONCURRENCY}"))
            if one:
                row["speedup_over_one_worker"] = row["median_items_per_s"] / one["median_items_per_s"]
    load_after = os.getloadavg()
    report = {"measured_at": datetime.now(UTC).isoformat(), "items": args.items,
              "latency_ms": args.latency_ms, "repeats": args.repeats, "task_threads": args.task_threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "load_average_before": load_before, "load_average_after": load_after, "results": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    parts = ["engine", "model server", "PostgreSQL", "Redis"]
    lines = [f"{args.items} items a job, {args.latency_ms:g} ms per call, medians of {args.repeats} interleaved "
             f"runs; {os.cpu_count()} cores; load average (1/5/15 min) {load_before[0]:.2f}/{load_before[1]:.2f}/"
             f"{load_before[2]:.2f} before, {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after.", "",
             "*bare asyncio*: `chat.completions.create` in an asyncio loop, the issue's limit; *bare asyncio post*: "
             "the client's own `post` of the JSON body, as the engine calls, the stricter limit; *post aiohttp*: "
             "the same on the SDK's aiohttp transport, the engine's default HTTP stack, the strictest.", "",
             "*calls phase*: from the job's first call to its last result (the per-item cost, without the job's "
             "fixed costs), against the bare loop's whole run.", "",
             "| configuration | items/s (median) | ratio to bare loop | ratio to post loop | ratio to aiohttp post "
             "loop | x one worker | calls phase items/s | calls phase ratio to bare loop | pre-call share | "
             f"busy slots per worker (of {CONCURRENCY}) | "
             + " | ".join(f"CPU ms/item: {p}" for p in parts) + " |",
             "| --- " * (10 + len(parts)) + "|"]
    for name, row in summary.items():
        speedup = row.get("speedup_over_one_worker")
        busy = row["median_busy_slots_per_worker"]
        lines.append(f"| {name} | {row['median_items_per_s']:.1f} | {row['ratio_to_bare_loop']:.2f} | "
                     f"{row['ratio_to_lean_loop']:.2f} | {row['ratio_to_aiohttp_loop']:.2f} | "
                     f"{'' if speedup is None else f'{speedup:.2f}'} | {row['median_calls_phase_items_per_s']:.1f} | "
                     f"{row['calls_phase_ratio_to_bare_loop']:.2f} | {row['median_pre_call_share']:.0%} | "
                     f"{'' if busy is None else f'{busy:.1f}'} | "
                     + " | ".join(f"{row['median_cpu_ms_per_item'][p]:.2f}" for p in parts) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
