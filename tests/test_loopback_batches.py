"""The loopback server speaks OpenAI's Files and Batches API, through the real `openai` client: what the provider
side of a tier in batch mode is tested against."""

from __future__ import annotations

import json
import time

import httpx
import openai
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from routeyard.testing.loopback import LoopbackConfig, LoopbackServer
from routeyard.testing.loopback_batches import BatchBehaviour

KEY = "sk-loopback-batches-0123456789"


def lines(n: int, marker: str = "") -> bytes:
    return "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}{marker}"}]}})
                   + "\n" for i in range(n)).encode()


def run_batch(client: openai.OpenAI, content: bytes) -> Batch:
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert isinstance(uploaded, FileObject) and uploaded.bytes == len(content)
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"routeyard": "1"})
    assert batch.status in ("validating", "in_progress")
    while batch.status in ("validating", "in_progress", "finalizing"):
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    return batch


def test_a_batch_runs_every_line_and_writes_openais_output_and_error_files():
    config = LoopbackConfig(api_key=KEY, batches=BatchBehaviour(delay_s=0.2, failed_line_rate=0.25, seed=1))
    with LoopbackServer(config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY)
        batch = run_batch(client, lines(40))
        assert batch.status == "completed" and batch.metadata == {"routeyard": "1"}
        out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
        err = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
        assert batch.request_counts.completed == len(out) and batch.request_counts.failed == len(err) > 0
        assert sorted(e["custom_id"] for e in out + err) == sorted(f"c{i}" for i in range(40))
        for entry in out:
            ChatCompletion.model_validate(entry["response"]["body"])
            assert entry["response"]["status_code"] == 200 and entry["response"]["request_id"].startswith("req_")
        assert all(e["response"]["status_code"] == 500 for e in err)
        assert [b.id for b in client.batches.list()] == [batch.id]
        assert httpx.get(server.base_url.removesuffix("/v1") + "/_stats").json()["batch_lines_run"] == 40


def test_an_expired_batch_leaves_a_share_of_lines_unrun_named_in_the_error_file():
    config = LoopbackConfig(api_key=KEY, batches=BatchBehaviour(delay_s=0.1, expire_share=0.5, seed=2))
    with LoopbackServer(config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY)
        batch = run_batch(client, lines(30))
        assert batch.status == "expired"
        err = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
        unrun = [e for e in err if e["error"] and e["error"]["code"] == "batch_expired"]
        assert 0 < len(unrun) < 30 and batch.request_counts.completed == 30 - len(unrun)


def test_a_cancelled_batch_runs_nothing_and_a_wrong_key_is_refused():
    config = LoopbackConfig(api_key=KEY, batches=BatchBehaviour(delay_s=30))
    with LoopbackServer(config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY)
        uploaded = client.files.create(file=("in.jsonl", lines(3)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert client.batches.cancel(batch.id).status == "cancelled"
        assert client.batches.retrieve(batch.id).output_file_id is None
        try:
            openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0).batches.retrieve(batch.id)
        except openai.AuthenticationError:
            pass
        else:
            raise AssertionError("a wrong key was accepted")
