"""PostgreSQL plans that must hold at scale: statements that touch a few items of a large job stay on the
indexes meant for them, whatever the job's items were when the planner last counted them."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text, update
from test_cancel_races import pending_job

from db import jobs as store
from db.models import Item, Job
from db.session import open_database
from routeyard.errors import Conflict
from routeyard.settings import Settings
from routeyard.states import ItemStatus, JobStatus
from worker import pipeline

N = 20_000


def test_routing_a_large_job_keeps_its_claims_on_the_primary_key(postgres_url):
    sf = open_database(postgres_url)
    job_id = pending_job(sf, N, "p")
    with sf() as s:  # scored, in an order unlike the ids
        s.execute(update(Item).where(Item.job_id == job_id).values(score=(Item.id * 7919 % N) / float(N)))
        s.commit()
    with sf() as s:  # what autovacuum does after a large submit: the planner learns every item is pending
        s.execute(text("ANALYZE items"))
        s.commit()

    assert pipeline.assign_routes(sf, job_id, Settings()) is not None

    with sf() as s:
        ids = list(s.scalars(select(Item.id).where(Item.job_id == job_id).order_by(Item.id).limit(50)))
        # The claim's own lookup (db/jobs.py:claim_items): 50 ids of the job, still claimable.
        plan = "\n".join(row[0] for row in s.execute(text(
            "EXPLAIN SELECT id FROM items WHERE id = ANY(:ids) AND job_id = :job AND (status = 'routed' OR "
            "(status = 'in_flight' AND started_at < now())) ORDER BY id FOR UPDATE SKIP LOCKED"),
            {"ids": ids, "job": job_id}))
    # Planned from the numbers of before the routing (no routed item yet), it walked the job's whole
    # (job_id, status) index for each claim: 460 ms a claim at a million items.
    assert "items_pkey" in plan and "ix_items_job_status" not in plan, plan


def test_a_completion_task_checks_the_models_of_its_own_items_only(database_url):
    """A worker whose strong model differs from the job's may still call the job's weak items: each task reads
    its own items' tiers by primary key (reading the whole job's tiers was a scan of every item, per task)."""
    sf = open_database(database_url)
    job_id = f"job_{uuid.uuid4().hex}"
    with sf() as s:
        s.add(Job(id=job_id, request_hash="", input_format="jsonl", router="random", strong_fraction=0.5,
                  strong_model="gpt-4-1106-preview", weak_model="mixtral-8x7b-instruct", n_items=4, threshold=0.5,
                  status=JobStatus.RUNNING))
        s.flush()
        store.add_items(s, [{"job_id": job_id, "line_no": i + 1, "custom_id": f"c{i}", "prompt": f"p{i}",
                             "body": {"messages": []}, "tier": tier, "status": ItemStatus.ROUTED}
                            for i, tier in enumerate(["weak", "weak", "strong", "strong"])])
        s.commit()
        ids = list(s.scalars(select(Item.id).where(Item.job_id == job_id).order_by(Item.id)))
    other_strong = Settings(strong_model="gpt-4o")
    pipeline.check_models(sf, job_id, other_strong, item_ids=ids[:2])  # weak items: this worker may call them
    with pytest.raises(Conflict, match="strong model is 'gpt-4-1106-preview'"):
        pipeline.check_models(sf, job_id, other_strong, item_ids=ids[1:3])
    with pytest.raises(Conflict, match="strong model"):  # the whole job (the embedded runner's check)
        pipeline.check_models(sf, job_id, other_strong)
