"""An OpenAI-compatible chat server on loopback, for the demo, the tests and the benchmarks.

It answers `POST /v1/chat/completions` like a real endpoint: answers (replayed from a recordings file when
one is given, otherwise composed deterministically from the prompt), usage tokens, and a latency that grows
with the answer's length. It can also misbehave on purpose: 429/500 for the first calls of a prompt, a share
of random 429/5xx, calls that hang past the client's timeout, a prompt marker that always fails. `GET /_stats`
says how often each prompt was called (how tests prove nothing was called twice) and its last request body.

Judge mode: requests to a model in `judge_models` (`--judge-model NAME` on the command line) are answered as an LLM
judge (routeyard/testing/loopback_judge.py): recorded verdicts (`judge_verdicts`, `judge_grades`; `--judge-file`),
else a verdict fixed by the pair (the same in both orders), a share with no verdict (`--judge-unparseable-rate`)
and a share always [[A]] (`--judge-position-bias`).

As a provider does, every response carries an `x-request-id` header (`req_` + the completion id's hex), and a
request with tools and `tool_choice` "required" (or a named function) is answered with a tool call (content null).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from routeyard.testing.loopback_batches import BatchBehaviour, add_batch_routes
from routeyard.testing.loopback_judge import JudgeBehaviour, judge_reply, load_judge_file


@dataclass(frozen=True)
class ModelProfile:
    """How a model behaves: time to first token, then time per output token, and answer length."""

    first_token_ms: float = 300.0
    ms_per_token: float = 2.0
    answer_words: int = 60
    reasoning_tokens: int = 0  # hidden tokens a reasoning model bills as completion, within max_completion_tokens


@dataclass
class LoopbackConfig:
    models: dict[str, ModelProfile] = field(default_factory=dict)  # unknown models get the default profile
    default_profile: ModelProfile = field(default_factory=ModelProfile)
    recordings: dict[tuple[str, str], str] = field(default_factory=dict)  # (model or "*", prompt) -> answer
    latency_scale: float = 1.0
    api_key: str | None = None  # require this bearer key (401 otherwise, like OpenAI)
    fail_first: int = 0  # the first N calls of each (model, prompt) fail with 429, then 500, alternately
    error_rate: float = 0.0  # share of calls answered 429/500/503 at random
    timeout_rate: float = 0.0  # share of calls that hang for `hang_s` (past the client's timeout)
    hang_first: int = 0  # the first N calls of each (model, prompt) hang for `hang_s`
    hang_s: float = 30.0
    always_fail_marker: str = "ROUTEYARD_ALWAYS_FAIL"  # prompts containing it get 500 every time
    echo_key_marker: str = "ROUTEYARD_ECHO_KEY"  # prompts containing it get a 400 that quotes the Authorization header
    seed: int = 0
    jitter: bool = True  # lognormal latency noise; off for benchmarks that want a fixed per-call latency
    judge_models: set[str] = field(default_factory=set)  # requests to these are answered as a judge
    judge_verdicts: dict[str, str] = field(default_factory=dict)  # question -> the winning answer's model, or "tie"
    judge_grades: dict[tuple[str, str], float] = field(default_factory=dict)  # (question, model) -> 1..10
    judge_unparseable_rate: float = 0.0  # share of judge replies with no verdict token
    judge_position_bias: float = 0.0  # share of pairwise judge replies that say [[A]] whatever the answers
    batches: BatchBehaviour = field(default_factory=BatchBehaviour)  # its /v1/batches: delay, failures, expiry
    # /v1/models lists `models` (a client's check then knows what is served); off: 404, as servers that serve
    # any model name answer (the server answers every model either way)
    list_models: bool = True


IMAGE_TOKENS = 765  # what OpenAI bills for a 1024x1024 image at high detail


def estimate_tokens(text: str) -> int:
    """~4 characters per token, the usual rule of thumb for English with BPE tokenizers."""
    return max(1, round(len(text) / 4))


_WORDS = ("the answer follows from the given facts so we can compute each part step by step and check the "
          "result against the question which confirms that this reasoning holds in general and for this "
          "case in particular").split()


def compose_answer(model: str, prompt: str, words: int) -> str:
    rng = random.Random(hashlib.sha256(f"{model}\x00{prompt}".encode()).digest())
    n = max(5, int(rng.gauss(words, words / 4)))
    return f"[{model}] " + " ".join(rng.choice(_WORDS) for _ in range(n)) + "."


def load_recordings(path: Path) -> dict[tuple[str, str], str]:
    """JSONL rows `{"prompt": ..., "model": ... (optional), "response": ...}`."""
    out: dict[tuple[str, str], str] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out[(row.get("model") or "*", row["prompt"])] = row["response"]
    return out


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status, headers={"x-request-id": f"req_{uuid.uuid4().hex[:24]}"})


def _tool_call(body: dict[str, Any], prompt: str, seed: str) -> dict[str, Any] | None:
    """The tool call a model makes when it must call one (tool_choice "required" or a named function)."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if not tools or not (choice == "required" or isinstance(choice, dict)):
        return None
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    name = name or (tools[0].get("function") or {}).get("name") or "tool"
    return {"id": "call_" + hashlib.sha1(seed.encode()).hexdigest()[:24], "type": "function",
            "function": {"name": name, "arguments": json.dumps({"query": prompt[:80]})}}


def _prompt_of(messages: list[dict[str, Any]]) -> str:
    prompt = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def create_app(config: LoopbackConfig) -> FastAPI:
    app = FastAPI(title="Routeyard loopback LLM")
    calls: Counter[str] = Counter()
    answered: Counter[str] = Counter()  # calls that got a 200: what a provider would bill
    by_model: Counter[str] = Counter()
    last_body: dict[str, dict[str, Any]] = {}
    served: dict[str, str] = {}  # answer -> the model that gave it, so the judge knows whose answer is whose
    rng = random.Random(config.seed)

    def respond(body: dict[str, Any], model: str, messages: list[dict[str, Any]], prompt: str,
                key: str) -> tuple[dict[str, Any], str, float]:
        """A completion for one accepted request: (body, request id, seconds it takes to answer)."""
        profile = config.models.get(model, config.default_profile)
        if model in config.judge_models:
            judge = JudgeBehaviour(config.judge_verdicts, config.judge_grades, config.judge_unparseable_rate,
                                   config.judge_position_bias)
            answer = judge_reply(judge, prompt, served, rng.random())
        else:
            answer = (config.recordings.get((model, prompt)) or config.recordings.get(("*", prompt))
                      or compose_answer(model, prompt, profile.answer_words))
        # Billed like a provider: the prompt includes tool and response-format schemas; each of the `n` choices
        # is billed, reasoning tokens included, and stops at max_completion_tokens (else max_tokens).
        prompt_tokens = sum(estimate_tokens(json.dumps(m.get("content") or "")) + 4 for m in messages)
        prompt_tokens += IMAGE_TOKENS * sum(1 for m in messages if isinstance(m.get("content"), list)
                                            for part in m["content"] if isinstance(part, dict)
                                            and part.get("type") == "image_url")
        prompt_tokens += sum(estimate_tokens(json.dumps(body[k])) for k in ("tools", "functions", "response_format")
                             if body.get(k))
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        choices, completion_tokens, reasoning = [], 0, 0
        for index in range(int(body.get("n") or 1)):
            text = answer if index == 0 else compose_answer(model, f"{prompt}#{index}", profile.answer_words)
            hidden = min(profile.reasoning_tokens, cap) if cap else profile.reasoning_tokens
            call = _tool_call(body, prompt, f"{key}#{index}")
            if call is not None:  # content null beside tool_calls, as OpenAI answers
                visible = estimate_tokens(json.dumps(call["function"]))
                choices.append({"index": index, "message": {"role": "assistant", "content": None,
                                                            "tool_calls": [call]}, "finish_reason": "tool_calls"})
                completion_tokens += hidden + visible
                reasoning += hidden
                continue
            visible, finish = estimate_tokens(text), "stop"
            if cap and hidden + visible > cap:
                visible, finish = cap - hidden, "length"
                text = text[: visible * 4]
            if model not in config.judge_models:
                served[text] = model
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish})
            completion_tokens += hidden + visible
            reasoning += hidden
        jitter = random.Random(key).lognormvariate(0, 0.25) if config.jitter else 1.0
        delay_ms = (profile.first_token_ms + profile.ms_per_token * completion_tokens) * jitter
        answered[key] += 1
        digest = hashlib.sha1(f"{key}{calls[key]}".encode()).hexdigest()[:24]
        return {
            "id": "chatcmpl-" + digest,
            "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "completion_tokens_details": {"reasoning_tokens": reasoning}},
        }, f"req_{digest}", delay_ms * config.latency_scale / 1000

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        try:
            body = await request.json()
            model, messages = body["model"], body["messages"]
        except ClientDisconnect:  # the caller went away mid-request (a run stopped with Ctrl-C): nobody to answer
            return JSONResponse({}, status_code=499)
        except (ValueError, KeyError, TypeError):
            return _error(400, "body must be JSON with 'model' and 'messages'", "invalid_request_error")
        if config.api_key is not None and auth != f"Bearer {config.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error")
        prompt = _prompt_of(messages)
        key = f"{model}\x00{prompt}"
        calls[key] += 1
        by_model[model] += 1
        last_body[key] = body
        if config.echo_key_marker in prompt:
            return _error(400, f"Malformed request; received header Authorization: {auth}", "invalid_request_error")
        if config.always_fail_marker in prompt:
            return _error(500, "The server had an error while processing your request.", "server_error")
        if calls[key] <= config.fail_first:
            if calls[key] % 2:
                return _error(429, "Rate limit reached. Please try again.", "rate_limit_error")
            return _error(500, "The server had an error while processing your request.", "server_error")
        draw = rng.random()
        if calls[key] <= config.fail_first + config.hang_first or (
                config.error_rate <= draw < config.error_rate + config.timeout_rate):
            # A hung request: the client gives up first; it is never answered (nor billed).
            await asyncio.sleep(config.hang_s)
            return _error(504, "upstream timed out", "timeout")
        if draw < config.error_rate:
            status = rng.choice((429, 500, 503))
            return _error(status, f"injected {status}", "server_error")
        payload, request_id, delay_s = respond(body, model, messages, prompt, key)
        await asyncio.sleep(delay_s)
        return JSONResponse(payload, headers={"x-request-id": request_id})

    @app.get("/v1/models", response_model=None)
    async def models(request: Request) -> dict[str, Any] | JSONResponse:
        if config.api_key is not None and request.headers.get("authorization") != f"Bearer {config.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error")
        if not config.list_models:
            return _error(404, "this server does not list its models: it answers any model", "not_found")
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"}
                                           for m in config.models]}

    def answer_line(body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        """One line of a provider batch, answered as a synchronous call would be (no latency, no faults but
        the always-fail marker: a batch's own faults are BatchBehaviour's)."""
        model, messages = body.get("model"), body.get("messages")
        request_id = "req_" + uuid.uuid4().hex[:24]
        if not isinstance(model, str) or not isinstance(messages, list):
            return 400, {"error": {"message": "body must have 'model' and 'messages'",
                                   "type": "invalid_request_error", "param": None, "code": None}}, request_id
        prompt = _prompt_of(messages)
        key = f"{model}\x00{prompt}"
        calls[key] += 1
        by_model[model] += 1
        last_body[key] = body
        if config.always_fail_marker in prompt:
            return 500, {"error": {"message": "The server had an error while processing your request.",
                                   "type": "server_error", "param": None, "code": None}}, request_id
        payload, request_id, _ = respond(body, model, messages, prompt, key)
        return 200, payload, request_id

    def authorized(request: Request) -> bool:
        return config.api_key is None or request.headers.get("authorization") == f"Bearer {config.api_key}"

    batch_stats = add_batch_routes(app, lambda: config.batches, answer_line, authorized)

    @app.get("/_stats")
    async def stats() -> dict[str, Any]:
        return {"total": sum(calls.values()), "by_model": dict(by_model),
                "max_calls_per_prompt": max(calls.values(), default=0),
                "answered_total": sum(answered.values()), **batch_stats,
                "calls": [{"model": k.split("\x00", 1)[0], "prompt": k.split("\x00", 1)[1], "n": n,
                           "answered": answered[k], "last_body": last_body.get(k)} for k, n in calls.items()]}

    @app.post("/_reset")
    async def reset() -> dict[str, bool]:
        calls.clear()
        answered.clear()
        by_model.clear()
        last_body.clear()
        return {"ok": True}

    return app


class LoopbackServer:
    """Runs the app with uvicorn in a background thread on 127.0.0.1 (port 0: any free port)."""

    def __init__(self, config: LoopbackConfig | None = None, port: int = 0) -> None:
        import uvicorn

        self.config = config or LoopbackConfig()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(create_app(self.config), log_level="warning",
                                                     access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LoopbackServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the loopback LLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DEMO_MODELS = {
    "gpt-4-1106-preview": ModelProfile(first_token_ms=600, ms_per_token=12, answer_words=120),
    "mixtral-8x7b-instruct": ModelProfile(first_token_ms=250, ms_per_token=4, answer_words=90),
}


def main() -> None:
    """`python -m routeyard.testing.loopback --port 8100 --latency-ms 100`: serve in the foreground."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency-ms", type=float, default=None, help="fixed latency per call (no jitter)")
    parser.add_argument("--recordings", type=Path, default=None, help="JSONL of {prompt, model?, response}")
    parser.add_argument("--models", default=None,
                        help="comma-separated models /v1/models lists (default: none listed; any model is served)")
    parser.add_argument("--batch-delay-s", type=float, default=0.5, help="a provider batch's time to its end")
    parser.add_argument("--batch-failed-line-rate", type=float, default=0.0, help="share of batch lines answered 500")
    parser.add_argument("--batch-expire-share", type=float, default=0.0, help="> 0: that share of lines never run")
    parser.add_argument("--judge-model", action="append", default=[], help="answer this model as an LLM judge")
    parser.add_argument("--judge-file", type=Path, default=None, help="JSONL of recorded verdicts: "
                        '{"question", "winner": MODEL or "tie"} or {"question", "model", "grade": 1-10}')
    parser.add_argument("--judge-unparseable-rate", type=float, default=0.0,
                        help="share of judge replies with no verdict")
    parser.add_argument("--judge-position-bias", type=float, default=0.0,
                        help="share of pairwise judge replies that say [[A]] whatever the answers")
    args = parser.parse_args()
    config = LoopbackConfig(models=dict(DEMO_MODELS), list_models=args.models is not None,
                            judge_models=set(args.judge_model), batches=BatchBehaviour(delay_s=args.batch_delay_s,
                                                   failed_line_rate=args.batch_failed_line_rate,
                                                   expire_share=args.batch_expire_share))
    if args.latency_ms is not None:
        config.models = {}
        config.default_profile = ModelProfile(first_token_ms=args.latency_ms, ms_per_token=0.0)
        config.jitter = False
    if args.recordings:
        config.recordings = load_recordings(args.recordings)
    config.judge_unparseable_rate, config.judge_position_bias = args.judge_unparseable_rate, args.judge_position_bias
    if args.judge_file:
        recorded = load_judge_file(args.judge_file, JudgeBehaviour())
        config.judge_verdicts, config.judge_grades = recorded.verdicts, recorded.grades
    if args.models:
        config.models = {**config.models, **{m: config.default_profile for m in args.models.split(",") if m}}
    uvicorn.run(create_app(config), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
