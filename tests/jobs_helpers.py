"""Helpers for the job tests: write a batch, submit and run it, read the loopback server's counters."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
from sqlalchemy import select

from db.models import Item
from db.session import open_database
from jobs.services.submit import JobOptions, submit_job
from routeyard.settings import Settings
from worker.embedded import run_embedded


def write_batch(path: Path, prompts: list[str], extra_lines: dict[int, str] | None = None) -> Path:
    """OpenAI Batch API lines; `extra_lines` inserts raw text before the item at that index."""
    with path.open("w") as f:
        for i, prompt in enumerate(prompts):
            if extra_lines and i in extra_lines:
                f.write(extra_lines[i] + "\n")
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "ignored", "max_tokens": 200,
                                         "messages": [{"role": "user", "content": prompt}]}}) + "\n")
    return path


def submit(settings: Settings, path: Path, **options: object):
    sf = open_database(settings.resolved_database_url)
    with path.open("rb") as f:
        result = submit_job(sf, settings, f, "jsonl", JobOptions(**{"router": "random", **options}),
                            source_name=path.name)
    return sf, result


def submit_and_run(settings: Settings, path: Path, **options: object):
    sf, result = submit(settings, path, **options)
    summary = run_embedded(sf, settings, result.job_id)
    return sf, result, summary


def items(sf, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.line_no)))


def server_stats(base_url: str) -> dict:
    return httpx.get(base_url.removesuffix("/v1") + "/_stats").json()


def calls_per_prompt(base_url: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in server_stats(base_url)["calls"]:
        out[row["prompt"]] = out.get(row["prompt"], 0) + row["n"]
    return out


def bytes_io(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())
