"""Writing a job's scores on PostgreSQL: one UPDATE joined to unnested id and score arrays per scoring batch
(what store_scores does there) against an UPDATE by primary key per row sent as one executemany (SQLite's way,
and PostgreSQL's before), side by side.

Each run: a fresh database, a job of N pending unscored items (bodies like a short chat prompt), ANALYZE, then
every item's score written as the scoring tasks write them: --batch items a transaction, the job row touched
first (as every writer locks it before its items). Timed whole. The two ways alternate, which goes first
alternating too, so drift hits both alike. Median of --repeats runs each; the server's CPU time is read too.

    python benchmarks/score_writes.py [--items 100000] [--batch 256] [--repeats 3]
Needs PostgreSQL on 127.0.0.1:55432 (bash tests/services.sh start). Writes results/score_writes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.pg_scratch import scratch_job  # noqa: E402
from benchmarks.throughput import postgres_cpu_s  # noqa: E402
from db import jobs as store  # noqa: E402
from db import routes  # noqa: E402
from db.models import Item  # noqa: E402

WAYS = {"one statement": routes.scores_in_one_statement, "row by row": routes.scores_row_by_row}


def one_run(way: str, n: int, batch: int) -> tuple[float, float]:
    """(seconds, PostgreSQL CPU seconds) to write every score."""
    with scratch_job(n, scored=False) as (sf, job_id):
        with sf() as s:
            ids = list(s.scalars(select(Item.id).where(Item.job_id == job_id).order_by(Item.id)))
        cpu = postgres_cpu_s()
        started = time.perf_counter()
        for start in range(0, n, batch):
            with sf() as s:
                store.touch_job(s, job_id)
                WAYS[way](s, [(i, (i * 7919 % 1000) / 1000) for i in ids[start : start + batch]], "random")
                s.commit()
        took, cpu = time.perf_counter() - started, postgres_cpu_s() - cpu
        with sf() as s:
            assert s.scalar(select(func.count()).where(Item.job_id == job_id, Item.score.is_(None))) == 0
    return took, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256, help="items a scoring transaction (score_batch_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "score_writes.json")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {way: [] for way in WAYS}
    server: dict[str, list[float]] = {way: [] for way in WAYS}
    for r in range(args.repeats):
        for way in (list(WAYS) if r % 2 == 0 else list(reversed(WAYS))):
            took, cpu = one_run(way, args.items, args.batch)
            runs[way].append(round(took, 2))
            server[way].append(round(cpu, 2))
            print(f"run {r + 1}: {way}: {took:.2f} s, PostgreSQL CPU {cpu:.2f} s", flush=True)
    medians = {way: statistics.median(v) for way, v in runs.items()}
    cpu_medians = {way: statistics.median(v) for way, v in server.items()}
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "items": args.items, "batch": args.batch, "load_average": os.getloadavg(),
              "runs": runs, "postgres_cpu_s": server, "median_s": medians, "median_postgres_cpu_s": cpu_medians,
              "speedup": round(medians["row by row"] / medians["one statement"], 2)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Score writes on PostgreSQL: {args.items:,} items, {args.batch} a transaction",
             "", f"{report['when']}, {report['machine']}, {report['cpus']} CPUs, load average at the end "
             f"{', '.join(f'{x:.1f}' for x in report['load_average'])}; medians of {args.repeats} interleaved runs "
             "(a fresh database each).", "",
             "| way | median s | us an item | PostgreSQL CPU s | runs |", "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {way} | {medians[way]:.2f} | {1e6 * medians[way] / args.items:.0f} | {cpu_medians[way]:.2f} | "
              f"{', '.join(map(str, runs[way]))} |" for way in WAYS]
    lines += ["", f"One statement is {report['speedup']}x faster."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
