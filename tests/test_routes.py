"""Writing a job's routes onto its items (db/routes.py), on both databases."""

from __future__ import annotations

from sqlalchemy import select, text, update
from test_cancel_races import pending_job

from db import jobs as store
from db import routes
from db.models import Item
from db.session import open_database
from routeyard.states import ItemStatus


def test_routes_put_each_item_on_its_tier_and_leave_an_item_cancelled_first_alone(database_url):
    sf = open_database(database_url)
    job_id = pending_job(sf, 50, "routes")
    with sf() as s:
        ids = list(s.scalars(select(Item.id).where(Item.job_id == job_id).order_by(Item.id)))
        s.execute(update(Item).where(Item.id == ids[3]).values(status=ItemStatus.CANCELLED))
        s.commit()
    strong = [i % 3 == 0 for i in range(len(ids))]

    with sf() as s:
        job = store.get_job(s, job_id, lock=True)
        postgres = s.get_bind().dialect.name == "postgresql"
        # This backend's row updates not yet flushed to the statistics (the cancel above may be among them).
        updates = text("SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'items'")
        before = s.scalar(updates) if postgres else 0
        routes.store_routes(s, job, ids, strong, 0.42)
        if postgres:  # one rewrite per routed row: each rewrite adds an entry to every index of a large table
            assert s.scalar(updates) - before == len(ids) - 1
        s.commit()

    with sf() as s:
        rows = {r.id: r for r in s.execute(select(Item.id, Item.status, Item.tier, Item.model, Item.threshold)
                                           .where(Item.job_id == job_id))}
        assert store.get_job(s, job_id).threshold == 0.42
    for n, item_id in enumerate(ids):
        row = rows[item_id]
        if n == 3:
            assert (row.status, row.tier) == (ItemStatus.CANCELLED, None)
            continue
        tier = "strong" if strong[n] else "weak"
        model = "gpt-4-1106-preview" if strong[n] else "mixtral-8x7b-instruct"
        assert (row.status, row.tier, row.model, row.threshold) == (ItemStatus.ROUTED, tier, model, 0.42)
