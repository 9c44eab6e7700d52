"""What the write benchmarks (routing_writes.py, score_writes.py) share: a throwaway PostgreSQL database holding
one job of N pending items (created fresh, analysed as autovacuum would after a submit, dropped after), ways run
side by side, and their report."""

from __future__ import annotations

import json
import os
import platform
import statistics
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session, sessionmaker

from db.models import Item, Job
from db.session import open_database
from routeyard.states import ItemStatus, JobStatus

PG_ADMIN = os.environ.get("ROUTEYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/postgres")


@contextmanager
def scratch_job(n: int, scored: bool) -> Iterator[tuple[sessionmaker[Session], str]]:
    """(session factory, job id): n pending items with bodies like a short chat prompt, scored or not."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    sf = open_database(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
    try:
        job_id = f"job_{uuid.uuid4().hex}"
        with sf() as s:
            s.add(Job(id=job_id, request_hash="", input_format="jsonl", router="random", strong_fraction=0.5,
                      strong_model="strong", weak_model="weak", n_items=n, status=JobStatus.SCORING))
            s.flush()
            for start in range(0, n, 20_000):
                s.execute(insert(Item), [
                    {"job_id": job_id, "line_no": i + 1, "custom_id": f"r{i}", "prompt": f"question {i}",
                     "body": {"messages": [{"role": "user", "content": f"question {i} " + "word " * 40}]},
                     "status": ItemStatus.PENDING, "score": (i * 7919 % 1000) / 1000 if scored else None}
                    for i in range(start, min(n, start + 20_000))])
            s.commit()
            s.execute(text("ANALYZE items"))
            s.commit()
        yield sf, job_id
    finally:
        sf.kw["bind"].dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}"'))
        admin.dispose()


def side_by_side(ways: Sequence[str], repeats: int, run: Callable[[str], dict[str, float]]
                 ) -> dict[str, dict[str, list[float]]]:
    """way -> measure -> one value a round. Each round runs every way once, the order alternating from round to
    round, so drift on a shared machine hits all alike."""
    runs: dict[str, dict[str, list[float]]] = {way: {} for way in ways}
    for r in range(repeats):
        for way in (list(ways) if r % 2 == 0 else list(reversed(ways))):
            for measure, value in run(way).items():
                runs[way].setdefault(measure, []).append(round(value, 2))
            print(f"run {r + 1}: {way}: {runs[way]}", flush=True)
    return runs


def write_report(out: Path, title: str, items: int, runs: dict[str, dict[str, list[float]]], **extra: object) -> None:
    """out (JSON) and out.md: medians of each measure per way, the first way's speed-up over the second on "s"."""
    ways = list(runs)
    measures = [m for m in runs[ways[0]] if m != "s"]
    median = {way: {m: statistics.median(v) for m, v in by.items()} for way, by in runs.items()}
    report: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "items": items, "load_average": os.getloadavg(), **extra,
        "runs": {way: by["s"] for way, by in runs.items()}, "median_s": {way: m["s"] for way, m in median.items()},
        **{m: {way: by[m] for way, by in runs.items()} for m in measures},
        **{f"median_{m}": {way: median[way][m] for way in ways} for m in measures},
        "speedup": round(median[ways[1]]["s"] / median[ways[0]]["s"], 2)}
    out.write_text(json.dumps(report, indent=2) + "\n")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    repeats = len(runs[ways[0]]["s"])
    lines = [f"# {title}", "", f"{report['when']}, {report['machine']}, {report['cpus']} CPUs, load average at the "
             f"end {load}; medians of {repeats} interleaved runs (a fresh database each).", "",
             "| way | median s | us an item | " + "".join(f"{m} | " for m in measures) + "runs (s) |",
             "| --- | ---: | ---: | " + "---: | " * len(measures) + "--- |"]
    lines += [f"| {way} | {median[way]['s']:.2f} | {1e6 * median[way]['s'] / items:.0f} | "
              + "".join(f"{median[way][m]:.2f} | " for m in measures)
              + f"{', '.join(map(str, runs[way]['s']))} |" for way in ways]
    lines += ["", f"{ways[0].capitalize()} is {report['speedup']}x faster."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
