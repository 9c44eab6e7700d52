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


def test_scores_land_on_their_items_in_one_statement_on_postgresql(database_url):
    from sqlalchemy import event

    sf = open_database(database_url)
    job_id = pending_job(sf, 40, "scores")
    with sf() as s:
        ids = list(s.scalars(select(Item.id).where(Item.job_id == job_id).order_by(Item.id)))
    given = [(item_id, (n * 37 % 40) / 40) for n, item_id in enumerate(ids[:30])]  # ten left unscored
    statements: list[str] = []
    with sf() as s:
        engine = s.get_bind()
        listen = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
        event.listen(engine, "before_cursor_execute", listen)
        try:
            routes.store_scores(s, given, "random@1")
            routes.store_scores(s, [], "random@1")  # nothing to write: no statement
            s.commit()
        finally:
            event.remove(engine, "before_cursor_execute", listen)
    updates = [x for x in statements if x.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1  # one cursor call on both (SQLite's executemany runs in-process)
    if engine.dialect.name == "postgresql":  # and on PostgreSQL one set-based statement, not one per row
        assert "unnest" in updates[0] and "executemany" not in str(statements)
    with sf() as s:
        stored = dict(s.execute(select(Item.id, Item.score).where(Item.job_id == job_id)).tuples().all())
        versions = set(s.scalars(select(Item.router_version).where(Item.id.in_(ids[:30]))))
    assert {i: stored[i] for i, _ in given} == dict(given)
    assert all(stored[i] is None for i in ids[30:])
    assert versions == {"random@1"}
