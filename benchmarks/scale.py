"""Cost as a job grows: items/s, peak memory and database size at 10k, 100k (and 1M) items, and the query plans of
the set-based statements that touch every item (issue 17, goal 3).

Each size runs on the embedded default (SQLite, one process) as a user runs it: `routeyard submit --detach`
(the file is parsed as a stream), then `routeyard run JOB`, then `routeyard results JOB --output` (streamed), each
its own process, whose peak RSS comes from the kernel (wait4). The model server is the loopback one in its own
process, at a fixed latency per call; the router is `random`, so what grows with the job is Routeyard's own
work. Then the statements that scoring, routing, results and spend run are captured from SQLAlchemy while they
run on the finished job and shown with EXPLAIN QUERY PLAN: a full scan where an index should serve is what
makes cost grow faster than the job.

    python benchmarks/scale.py [--sizes 10000 100000 1000000] [--workers 0 2] [--window-s 60] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Children import the checkout first and keep whatever PYTHONPATH the caller set (packages installed with --target).
CHILD_PYTHONPATH = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_batch(path: Path, n: int) -> None:
    """n chat requests, written line by line (the benchmark itself never holds the batch either)."""
    with path.open("w") as f:
        for i in range(n):
            question = f"Question {i}: what is {i} plus {i * 7 % 1000}? Answer briefly."
            body = {"messages": [{"role": "user", "content": question}], "max_tokens": 32}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")


def peak_of(cmd: list[str], env: dict[str, str], stop: Callable[[], bool] | None = None
            ) -> tuple[float, float, str, bool]:
    """(seconds, peak RSS in MB, stdout, interrupted) of one `routeyard` command in its own process; the peak is
    the kernel's (wait4). Once `stop()` is true, the command is interrupted (SIGINT, as a user's Ctrl-C)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        # A benchmark started in the background (nohup, `&`) has SIGINT ignored, and children inherit that:
        # give the command a user's Ctrl-C back.
        proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *cmd], env=env, stdout=out, stderr=err, cwd=ROOT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        interrupted = threading.Event()
        ended = threading.Event()

        def watch() -> None:
            while not ended.wait(0.5):
                if stop is not None and stop():
                    interrupted.set()
                    proc.send_signal(signal.SIGINT)
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        ended.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0 and not interrupted.is_set():
            raise RuntimeError(f"routeyard {' '.join(cmd)} exited {proc.returncode}: {err.read()[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024, out.read(), interrupted.is_set()


def calls_for(db_url: str, job_id: str, window_s: float | None) -> Callable[[], bool]:
    """True once the job has ended, or (with `window_s`) once its calls have run that long from its first
    succeeded item."""
    from sqlalchemy import create_engine, select

    from db.models import Item, Job
    from routeyard.states import JOB_ENDED, ItemStatus

    engine = create_engine(db_url)
    first: list[float] = []

    def check() -> bool:
        try:
            with engine.connect() as conn:
                status = conn.scalar(select(Job.status).where(Job.id == job_id))
                if status in JOB_ENDED:
                    return True
                if window_s is None:
                    return False
                if not first and conn.scalar(select(Item.id).where(
                        Item.job_id == job_id, Item.status == ItemStatus.SUCCEEDED).limit(1)) is not None:
                    first.append(time.monotonic())
        except Exception:  # SQLite busy for a moment: look again next time
            return False
        return bool(first) and time.monotonic() - first[0] >= window_s

    return check


def call_phase(db_url: str, job_id: str) -> dict[str, float]:
    """From the items' own timestamps: how many finished, and at what rate from the first call's start to the
    last one's end (the run minus process start, scoring and routing)."""
    from sqlalchemy import func, select

    from db.models import Item
    from db.session import open_database
    from routeyard.states import ItemStatus

    sf = open_database(db_url)
    with sf() as session:
        done, first, last = session.execute(
            select(func.count(), func.min(Item.started_at), func.max(Item.finished_at))
            .where(Item.job_id == job_id, Item.status == ItemStatus.SUCCEEDED)).one()
    sf.kw["bind"].dispose()
    span = (last - first).total_seconds() if done else float("nan")
    return {"done": int(done), "calls_s": round(span, 2), "calls_items_per_s": round(done / span, 1) if done else 0.0}


def query_plans(db_url: str, job_id: str) -> list[dict[str, object]]:
    """The statements routing, results and spend run on the finished job, each with SQLite's query plan."""
    from sqlalchemy import event, text

    from db import jobs as store
    from db import runners
    from db import spend as spend_db
    from db.session import open_database

    sf = open_database(db_url)
    engine = sf.kw["bind"]
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE")) and not executemany:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    with sf() as session:
        store.unscored_items(session, job_id, 64)  # scoring's next batch
        if not store.unscored_items(session, job_id, 1):
            store.item_scores(session, job_id)  # routing
        store.claimable_ids(session, job_id, 600.0)  # a completion fan-out
        store.status_counts(session, job_id)
        store.tier_counts(session, job_id)
        runners.stalled_jobs(session, 600.0)  # beat's reconciler, every few seconds
        next(store.iter_items(session, job_id, chunk=1000), None)  # results/export: one chunk shows the plan
        spend_filter = getattr(spend_db, "SpendFilter", None)
        if spend_filter is not None and hasattr(spend_db, "spend_rows"):
            spend_db.spend_rows(session, spend_filter(job_id=job_id))
    event.remove(engine, "before_cursor_execute", capture)
    plans, seen = [], set()
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if postgres:
            conn.exec_driver_sql("ANALYZE items")  # plans from current statistics, as autovacuum would have them
        for statement, params in captured:
            key = " ".join(statement.split())
            if key in seen:
                continue
            seen.add(key)
            if postgres:
                rows = conn.exec_driver_sql("EXPLAIN " + statement, params).fetchall()
            elif isinstance(params, dict):
                rows = conn.execute(text("EXPLAIN QUERY PLAN " + statement), params).fetchall()
            else:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, tuple(params or ())).fetchall()
            detail = [str(r[0]).strip() if postgres else str(r[-1]) for r in rows]
            plans.append({"sql": key[:300], "plan": detail,
                          "full_scan": any(_table_scan(d) for d in detail)})
    engine.dispose()
    return plans


def _table_scan(step: str) -> bool:
    """A plan step that reads a whole table (not a subquery's rows, not through an index)."""
    if "Seq Scan on items" in step:  # PostgreSQL
        return True
    return step.startswith("SCAN ") and "USING" not in step and not step.startswith("SCAN anon_")


def run_size(n: int, base_url: str, concurrency: int, work: Path, window_s: float | None) -> dict[str, object]:
    """One size, end to end. With `window_s`, `routeyard run` is interrupted after that long (Ctrl-C) and the
    call rate is what it reached on the whole job's database until then; export still streams every item."""
    home = work / f"home-{n}"
    batch = work / f"batch-{n}.jsonl"
    write_batch(batch, n)
    db_url = f"sqlite:///{home / 'routeyard.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
    env.update(PYTHONPATH=CHILD_PYTHONPATH, ROUTEYARD_HOME=str(home), ROUTEYARD_STRONG_BASE_URL=base_url,
               ROUTEYARD_WEAK_BASE_URL=base_url, ROUTEYARD_STRONG_API_KEY="bench", ROUTEYARD_WEAK_API_KEY="bench",
               ROUTEYARD_CONCURRENCY=str(concurrency), ROUTEYARD_MAX_RETRIES="2")
    db_file = home / "routeyard.db"
    submit_s, submit_mb, out, _ = peak_of(["submit", str(batch), "--router", "random", "--detach", "--json"], env)
    job_id = json.loads(out)["job_id"]
    stop = calls_for(db_url, job_id, window_s) if window_s else None
    run_s, run_mb, _, _ = peak_of(["run", job_id, "--json"], env, stop)
    calls = call_phase(db_url, job_id)
    export_s, export_mb, _, _ = peak_of(["results", job_id, "--output", str(work / f"out-{n}.jsonl")], env)
    size_mb = sum(p.stat().st_size for p in home.glob("routeyard.db*")) / 2**20
    plans = query_plans(db_url, job_id) if db_file.exists() else []
    batch.unlink()
    finished = calls["done"] == n
    return {"mode": "embedded", "items": n, "submit_s": round(submit_s, 2),
            "submit_items_per_s": round(n / submit_s, 1),
            "submit_peak_rss_mb": round(submit_mb, 1), "run_s": round(run_s, 2), "run_finished": finished,
            "run_items_per_s": round(n / run_s, 1) if finished else None, "run_peak_rss_mb": round(run_mb, 1),
            "before_calls_s": round(run_s - calls["calls_s"], 2) if finished else None, **calls,
            "export_s": round(export_s, 2), "export_items_per_s": round(n / export_s, 1),
            "export_peak_rss_mb": round(export_mb, 1), "db_mb": round(size_mb, 1), "plans": plans}


PG_ADMIN = os.environ.get("ROUTEYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/postgres")


def fresh_pg_database() -> str:
    from sqlalchemy import create_engine, text

    name = f"routeyard_scale_{os.urandom(4).hex()}"
    engine = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def peak_rss_mb(pid: int) -> float:
    """A live process's peak RSS so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_distributed(n: int, base_url: str, concurrency: int, work: Path, window_s: float | None,
                    workers: int) -> dict[str, object]:
    """One size on PostgreSQL + Redis + `workers` Celery workers (threads pool, 2 task threads each) and beat,
    as README's distributed set-up runs them; submit (--detach), run and export are `routeyard` processes as
    above."""
    from sqlalchemy import create_engine, text

    from db.session import open_database
    from routeyard.testing.services import PrivateRedis

    home = work / f"dist-{n}"
    home.mkdir()
    batch = work / f"batch-{n}.jsonl"
    write_batch(batch, n)
    db_url = fresh_pg_database()
    open_database(db_url).kw["bind"].dispose()  # migrated once, before the workers start
    redis = PrivateRedis().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
    env.update(PYTHONPATH=CHILD_PYTHONPATH, ROUTEYARD_HOME=str(home), ROUTEYARD_DATABASE_URL=db_url,
               ROUTEYARD_BROKER_URL=redis.url, ROUTEYARD_STRONG_BASE_URL=base_url, ROUTEYARD_WEAK_BASE_URL=base_url,
               ROUTEYARD_STRONG_API_KEY="bench", ROUTEYARD_WEAK_API_KEY="bench",
               ROUTEYARD_CONCURRENCY=str(concurrency // (2 * workers)), ROUTEYARD_MAX_RETRIES="2")
    logs = [home / f"worker{i}.log" for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "jobs.cli", "worker", "--pool", "threads", "--concurrency", "2"],
                              env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    procs.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "jobs.periodic", "beat", "--schedule",
                                   str(home / "beat-schedule")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 120
        while not all("ready" in log.read_text() for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start: " + " | ".join(log.read_text()[-500:] for log in logs))
            time.sleep(0.5)
        submit_s, submit_mb, out, _ = peak_of(["submit", str(batch), "--router", "random", "--detach", "--json"],
                                              env)
        job_id = json.loads(out)["job_id"]
        started = time.perf_counter()
        peak_of(["run", job_id], env)  # hands the stored job to the workers (and returns: distributed mode)
        done = calls_for(db_url, job_id, window_s)
        while not done():
            time.sleep(1.0)
        run_s = time.perf_counter() - started
        worker_mb = max(peak_rss_mb(p.pid) for p in procs[:workers])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        redis.close()
    calls = call_phase(db_url, job_id)
    export_s, export_mb, _, _ = peak_of(["results", job_id, "--output", str(work / f"out-dist-{n}.jsonl")], env)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        size_mb = conn.scalar(text("SELECT pg_database_size(current_database())")) / 2**20
    engine.dispose()
    plans = query_plans(db_url, job_id)
    batch.unlink()
    finished = calls["done"] == n
    return {"mode": f"{workers} workers", "items": n, "submit_s": round(submit_s, 2),
            "submit_items_per_s": round(n / submit_s, 1), "submit_peak_rss_mb": round(submit_mb, 1),
            "run_s": round(run_s, 2), "run_finished": finished,
            "run_items_per_s": round(n / run_s, 1) if finished else None, "run_peak_rss_mb": round(worker_mb, 1),
            "before_calls_s": None, **calls, "export_s": round(export_s, 2),
            "export_items_per_s": round(n / export_s, 1), "export_peak_rss_mb": round(export_mb, 1),
            "db_mb": round(size_mb, 1), "plans": plans}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, nargs="*", default=[0],
                        help="0: the embedded default; k > 0: PostgreSQL + Redis + k Celery workers")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight in all")
    parser.add_argument("--out", default="scale")
    parser.add_argument("--window-s", type=float, default=None,
                        help="stop the calls this long after the first answer (sizes above --window-above)")
    parser.add_argument("--window-above", type=int, default=100_000)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "routeyard.testing.loopback", "--port", str(port),
                               "--latency-ms", str(args.latency_ms)], cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                httpx.get(base_url.replace("/v1", "/_stats"), timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows = []
        for workers in args.workers:
            for n in sorted(args.sizes):
                window = args.window_s if n > args.window_above else None
                with tempfile.TemporaryDirectory() as tmp:
                    rows.append(run_distributed(n, base_url, args.concurrency, Path(tmp), window, workers)
                                if workers else run_size(n, base_url, args.concurrency, Path(tmp), window))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "plans"}), flush=True)
    finally:
        server.terminate()
        server.wait()
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "latency_ms": args.latency_ms, "concurrency": args.concurrency,
              "router": "random", "load_average": os.getloadavg(), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    lines = [f"# Scale: random router, loopback at {report['latency_ms']:g} ms, {report['concurrency']} calls in "
             "flight", "", f"{report['when']}, {report['machine']}, {report['cpus']} CPUs, load average at the end "
             f"{', '.join(f'{x:.1f}' for x in report['load_average'])}.", "",
             "*embedded*: SQLite, each step its own `routeyard` process (peak RSS from the kernel, wait4). *k "
             "workers*: PostgreSQL + Redis + k Celery workers (threads pool) and beat; run peak RSS is the largest "
             "worker's (VmHWM). *calls items/s*: succeeded items over the span from the first call's start to the "
             "last call's end; *before calls*: process start, scoring and routing. A size run in a window was "
             "stopped (Ctrl-C) that long after its first answer: its call rate is what it reached with the whole "
             "job in the database; its export still streams every item.", "",
             "| mode | items | submit items/s | submit peak RSS MB | run | run items/s | before calls s | "
             "calls items/s | run peak RSS MB | export items/s | export peak RSS MB | database MB |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        run = "whole job" if r["run_finished"] else f"{r['done']:,} items in {r['run_s']:.0f} s"
        before = "-" if r["before_calls_s"] is None else r["before_calls_s"]
        lines.append(f"| {r['mode']} | {r['items']:,} | {r['submit_items_per_s']} | {r['submit_peak_rss_mb']} | "
                     f"{run} | {r['run_items_per_s'] or '-'} | {before} | {r['calls_items_per_s']} | "
                     f"{r['run_peak_rss_mb']} | {r['export_items_per_s']} | {r['export_peak_rss_mb']} | {r['db_mb']} |")
    shown: set[str] = set()
    for r in sorted(report["rows"], key=lambda r: -r["items"]):  # the biggest job of each mode
        if r["mode"] in shown:
            continue
        shown.add(r["mode"])
        kind = "PostgreSQL EXPLAIN" if r["mode"] != "embedded" else "SQLite EXPLAIN QUERY PLAN"
        lines += ["", f"Query plans on the {r['items']:,}-item job, {r['mode']} ({kind}):", ""]
        for plan in r["plans"]:
            lines.append(f"- `{plan['sql'][:160]}`: {'; '.join(plan['plan'])}"
                         f"{'  **full scan**' if plan['full_scan'] else ''}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
