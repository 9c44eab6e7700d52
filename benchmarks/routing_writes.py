"""Writing a large job's routes on PostgreSQL: one UPDATE (what store_routes does there) against two passes
(every pending item made weak, then the strong share by id, a thousand ids a statement: SQLite's way, and
PostgreSQL's before), side by side.

Each run: a fresh database, a job of N pending scored items (bodies like a short chat prompt), ANALYZE (as
autovacuum does after a submit), then the routes of half of them strong, timed with the commit. The two ways
alternate, which goes first alternating too, so drift hits both alike. Median of --repeats runs each.

    python benchmarks/routing_writes.py [--items 200000] [--repeats 3]
Needs PostgreSQL on 127.0.0.1:55432 (bash tests/services.sh start). Writes results/routing_writes.{json,md}.
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
from db import jobs as store  # noqa: E402
from db import routes  # noqa: E402
from db.models import Item  # noqa: E402

WAYS = {"one statement": routes.routes_in_one_statement, "two passes": routes.routes_in_two_passes}


def one_run(way: str, n: int) -> float:
    with scratch_job(n, scored=True) as (sf, job_id), sf() as s:
        ids, scores = store.item_scores(s, job_id)
        chosen = [i for i, score in zip(ids, scores, strict=True) if score >= 0.5]
        job = store.get_job(s, job_id, lock=True)
        started = time.perf_counter()
        WAYS[way](s, job, chosen, 0.5)
        s.commit()
        took = time.perf_counter() - started
        strong = s.scalar(select(func.count()).where(Item.job_id == job_id, Item.tier == "strong"))
        assert strong == len(chosen), (strong, len(chosen))
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "routing_writes.json")
    args = parser.parse_args()
    runs = side_by_side(list(WAYS), args.repeats, lambda way: {"s": one_run(way, args.items)})
    write_report(args.out, f"Routing writes on PostgreSQL: {args.items:,} pending items, half routed strong",
                 args.items, runs)

if __name__ == "__main__":
    main()
