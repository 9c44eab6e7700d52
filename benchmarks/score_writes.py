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
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.pg_scratch import scratch_job, side_by_side, write_report  # noqa: E402
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
    runs = side_by_side(list(WAYS), args.repeats,
                        lambda way: dict(zip(("s", "postgres_cpu_s"), one_run(way, args.items, args.batch),
                                             strict=True)))
    write_report(args.out, f"Score writes on PostgreSQL: {args.items:,} items, {args.batch} a transaction",
                 args.items, runs, batch=args.batch)

if __name__ == "__main__":
    main()
