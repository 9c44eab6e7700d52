"""A throwaway PostgreSQL database holding one job of N pending items, for the write benchmarks
(routing_writes.py, score_writes.py): created fresh, analysed as autovacuum would after a submit, dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

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
