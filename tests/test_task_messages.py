"""The messages a job's work is sent as, read back from a real Redis broker: every item in exactly one task,
tasks that grow for a very large job instead of multiplying, and log lines that name a count, not the ids."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from routeyard.settings import Settings
from routeyard.testing.services import PrivateRedis
from worker.celery_app import COMPLETE_QUEUE, make_celery
from worker.tasks import MAX_COMPLETION_TASKS, _send_chunks, completion_chunk


@pytest.fixture
def broker():
    server = PrivateRedis().start()
    yield server
    server.close()


def test_a_large_job_gets_larger_completion_tasks_not_more_of_them():
    settings = Settings(complete_batch_size=50)
    assert completion_chunk(10_000, settings) == 50
    assert completion_chunk(50 * MAX_COMPLETION_TASKS, settings) == 50
    big = completion_chunk(1_000_000, settings)
    assert big == 500 and -(-1_000_000 // big) <= MAX_COMPLETION_TASKS
    assert completion_chunk(1_000_001, settings) == 501  # rounded up: never one task more than the bound
    assert completion_chunk(0, settings) == 50


def test_every_item_is_sent_once_over_one_connection_with_a_short_log_line(broker):
    app = make_celery(Settings(broker_url=broker.url))

    @app.task(name="routeyard.complete_batch")
    def complete_batch(job_id: str, item_ids: list[int]) -> None:  # only sent here, never run
        raise AssertionError("not run in this test")

    ids = list(range(1000, 1000 + 50 * 7 + 13))
    _send_chunks(complete_batch, "job_x", ids, 50)

    client = redis.Redis.from_url(broker.url)
    messages = [json.loads(raw) for raw in reversed(client.lrange(COMPLETE_QUEUE, 0, -1))]  # LPUSH: oldest last
    assert len(messages) == 8
    sent: list[int] = []
    for message in messages:
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args[0] == "job_x" and not kwargs
        assert message["headers"]["task"] == "routeyard.complete_batch"
        assert message["headers"]["argsrepr"] == f"('job_x', <{len(args[1])} items>)"
        sent += args[1]
    assert sent == ids
    client.close()
