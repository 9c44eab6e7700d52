"""The loopback server's OpenAI Files and Batches endpoints: a provider's batch API, so tests and the demo drive a
tier in batch mode through the real `openai` client.

A batch is `validating`, then `in_progress` until `batch_delay_s` after it was created; the first retrieve
after that runs its lines (each answered as /v1/chat/completions answers it) and writes an output file of the
lines that got a 200 and an error file of the rest, as OpenAI does. `batch_failed_line_rate` answers that share
of lines with a 500; `batch_expire_share` makes the batch `expired` with that share of lines never run (in the
error file with code `batch_expired`). Request ids are the server's own (`req_...`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

# (body) -> (status code, response body, request id): one line answered as a synchronous call would be
LineAnswerer = Callable[[dict[str, Any]], tuple[int, dict[str, Any], str]]


@dataclass
class BatchBehaviour:
    delay_s: float = 0.5  # from creation to the batch's end
    failed_line_rate: float = 0.0  # share of lines answered with a 500 (in the error file)
    expire_share: float = 0.0  # > 0: the batch expires with this share of its lines never run
    seed: int = 0


@dataclass
class _State:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> file object + "content"
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)  # batch ids in creation order (for listing)
    created_ts: dict[str, float] = field(default_factory=dict)  # to the sub-second: created_at is whole seconds


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": None}}, status_code=status)


def add_batch_routes(app: FastAPI, behaviour_now: Callable[[], BatchBehaviour], answer: LineAnswerer,
                     authorized: Callable[[Request], bool]) -> dict[str, Any]:
    """Mount /v1/files and /v1/batches on `app`; returns the stats the server's /_stats reports for them.
    `behaviour_now` is read when a batch runs, so a test may change it on a running server."""
    state = _State()
    stats: dict[str, Any] = {"batches_created": 0, "batch_lines_run": 0}

    def file_object(file_id: str) -> dict[str, Any]:
        return {k: v for k, v in state.files[file_id].items() if k != "content"}

    def store_file(content: bytes, filename: str, purpose: str) -> str:
        file_id = "file-" + uuid.uuid4().hex[:24]
        state.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content),
                                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                                "status": "processed", "content": content}
        return file_id

    def run(batch: dict[str, Any]) -> None:
        """Answer the batch's lines (or the share that an expiry leaves) and write its output and error files."""
        behaviour = behaviour_now()
        rng = random.Random(f"{behaviour.seed}:{state.created.index(batch['id'])}")
        lines = [json.loads(raw) for raw in state.files[batch["input_file_id"]]["content"].splitlines()
                 if raw.strip()]
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        expired = behaviour.expire_share > 0
        for line in lines:
            line_id = "batch_req_" + hashlib.sha1(f"{batch['id']}{line['custom_id']}".encode()).hexdigest()[:24]
            if expired and rng.random() < behaviour.expire_share:
                errors.append({"id": line_id, "custom_id": line["custom_id"], "response": None, "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired."}})
                continue
            stats["batch_lines_run"] += 1
            if rng.random() < behaviour.failed_line_rate:
                status, body, request_id = 500, {"error": {"message": "injected 500", "type": "server_error",
                                                           "param": None, "code": None}}, f"req_{line_id[10:]}"
            else:
                status, body, request_id = answer(line["body"])
            entry = {"id": line_id, "custom_id": line["custom_id"],
                     "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}
            (out if status == 200 else errors).append(entry)
        now = int(time.time())
        for name, entries in (("output_file_id", out), ("error_file_id", errors)):
            if entries:
                content = "".join(json.dumps(e) + "\n" for e in entries).encode()
                batch[name] = store_file(content, f"{batch['id']}_{name[:-8]}.jsonl", "batch_output")
        failed = sum(1 for e in errors if e["response"] is not None)
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": failed}
        batch.update(status="expired" if expired else "completed", finalizing_at=now,
                     **({"expired_at": now} if expired else {"completed_at": now}))

    def current(batch_id: str) -> dict[str, Any]:
        batch = state.batches[batch_id]
        if batch["status"] in ("validating", "in_progress"):
            if time.time() >= state.created_ts[batch_id] + behaviour_now().delay_s:
                run(batch)
            elif batch["status"] == "validating":
                batch.update(status="in_progress", in_progress_at=int(time.time()))
        return batch

    @app.post("/v1/files", response_model=None)
    async def create_file(request: Request) -> dict[str, Any] | JSONResponse:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile) or not isinstance(purpose, str):
            return _error(400, "multipart fields 'file' and 'purpose' are required")
        return file_object(store_file(await upload.read(), upload.filename or "upload.jsonl", purpose))

    @app.get("/v1/files/{file_id}", response_model=None)
    async def retrieve_file(file_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        return file_object(file_id) if file_id in state.files else _error(404, f"No such File object: {file_id}")

    @app.get("/v1/files/{file_id}/content", response_model=None)
    async def file_content(file_id: str, request: Request) -> Response:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        if file_id not in state.files:
            return _error(404, f"No such File object: {file_id}")
        return Response(state.files[file_id]["content"], media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", response_model=None)
    async def delete_file(file_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        if state.files.pop(file_id, None) is None:
            return _error(404, f"No such File object: {file_id}")
        return {"id": file_id, "object": "file", "deleted": True}

    @app.post("/v1/batches", response_model=None)
    async def create_batch(request: Request) -> dict[str, Any] | JSONResponse:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        body = await request.json()
        if body.get("input_file_id") not in state.files:
            return _error(400, f"input_file_id {body.get('input_file_id')!r}: no such file")
        batch_id = "batch_" + uuid.uuid4().hex[:24]
        now = int(time.time())
        state.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
            "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86_400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        state.created_ts[batch_id] = time.time()
        state.created.append(batch_id)
        stats["batches_created"] += 1
        return state.batches[batch_id]

    @app.get("/v1/batches/{batch_id}", response_model=None)
    async def retrieve_batch(batch_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        return current(batch_id) if batch_id in state.batches else _error(404, f"No such Batch: {batch_id}")

    @app.get("/v1/batches", response_model=None)
    async def list_batches(request: Request, limit: int = 20, after: str | None = None
                           ) -> dict[str, Any] | JSONResponse:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        newest_first = list(reversed(state.created))
        if after in newest_first:
            newest_first = newest_first[newest_first.index(after) + 1:]
        page = [current(b) for b in newest_first[:limit]]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(newest_first) > limit}

    @app.post("/v1/batches/{batch_id}/cancel", response_model=None)
    async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        if not authorized(request):
            return _error(401, "Incorrect API key provided.")
        if batch_id not in state.batches:
            return _error(404, f"No such Batch: {batch_id}")
        batch = current(batch_id)
        if batch["status"] in ("validating", "in_progress"):
            now = int(time.time())
            batch.update(status="cancelled", cancelling_at=now, cancelled_at=now)
        return batch

    return stats
