"""The judge: an LLM reads each shadow pair (the weak answer and the strong one) and says which is better,
MT-Bench style (Zheng et al., 2023). Its verdicts become the tenant's feedback rows.

Pairwise (`pair`, the default): the question and both answers, asked twice with the answers swapped to cancel
position bias; a verdict token `[[A]]`, `[[B]]` or `[[C]]` (tie) in each reply. Two verdicts that disagree
count as a tie. Single-answer (`grade`): each answer graded 1-10 on its own (`[[rating]]`); the higher grade
wins. A reply without exactly one verdict is stored as an error, never as a label; so is a call that still
fails after the client's retries.

Calls go through the same client as item calls (worker.llm_client: its retries, backoff and timeout), at most
`concurrency` pairs at a time; each pair's row is claimed before its calls and its verdict written with its
feedback row in one transaction, so after a crash only pairs that were in flight are judged again (at once
when their runner is known dead, else past their lease), and a judged pair never is. Every attempt's calls are
added to the pair's spend (worker/judge_cut_off.py counts those cut off).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db.judging import JudgeSpec, JudgeSpend, Pair, claim_pairs, judgeable_ids, judgment_counts, record_judgment
from routeyard.pricing import Unbounded, cost_bound, cost_usd, price_for
from routeyard.settings import Price, Settings
from routeyard.states import JobStatus, JudgmentStatus
from worker.heartbeat import beating
from worker.judge_cut_off import take_back_from_dead
from worker.judge_prompts import (
    MODES,
    PROMPT_VERSIONS,
    Unparseable,
    Verdict,
    bodies,
    grade_verdict,
    pair_body,
    pair_verdict,
    parse_grade,
    parse_pair,
)
from worker.llm_client import CallResult, ModelClient

__all__ = ["MODES", "JudgeSummary", "judge_job", "judge_pair", "pair_body", "pair_verdict", "parse_grade",
           "parse_pair", "run_judge"]
CLAIM_CHUNK = 32

async def judge_pair(client: ModelClient, pair: Pair, mode: str) -> tuple[Verdict, list[CallResult]]:
    """Ask the judge about one pair (both calls at once); an error Verdict when a call failed or a reply had no
    verdict."""
    results = list(await asyncio.gather(*(client.complete(b) for b in bodies(pair, mode))))
    replies = [r.answer for r in results]
    failed = [r.error for r in results if not r.ok]
    if failed:
        return Verdict(None, None, None, {"replies": replies}, f"judge call failed: {failed[0]}"), results
    try:
        if mode == "pair":
            return pair_verdict(parse_pair(replies[0]), parse_pair(replies[1])), results
        return grade_verdict(parse_grade(replies[0]), parse_grade(replies[1])), results
    except Unparseable as exc:
        return Verdict(None, None, None, {"replies": [(r or "")[:2000] for r in replies]}, f"unparseable: {exc}"
                       ), results


def make_judge_client(settings: Settings) -> ModelClient:
    return ModelClient(settings.judge_endpoint(), max_retries=settings.max_retries,
                       timeout_s=settings.request_timeout_s, secrets=settings.secrets(),
                       http_backend=settings.http_backend)


@dataclass(frozen=True)
class JudgeSummary:
    job_id: str
    judged_now: int
    errors_now: int
    counts: dict[JudgmentStatus, int]


def judge_spec(mode: str, settings: Settings) -> JudgeSpec:
    return JudgeSpec(mode, settings.judge_model, PROMPT_VERSIONS[mode], settings.judge_heldout_share)


def attempt_spend(calls: list[CallResult], sent: list[dict[str, Any]], price: Price, settings: Settings
                  ) -> JudgeSpend:
    """What one attempt at a pair may be billed: its answered calls (a reply without a verdict is billed too),
    and its requests that timed out, at their cost bound."""
    unanswered = sum(c.unanswered for c in calls)
    bound = 0.0
    for call, body in zip(calls, sent, strict=True):
        try:
            bound += call.unanswered * cost_bound(body, price, settings.default_max_tokens) if call.unanswered else 0.0
        except Unbounded:  # counted, not priced
            pass
    tokens = (sum(c.prompt_tokens for c in calls), sum(c.completion_tokens for c in calls))
    return JudgeSpend(sum(1 for c in calls if c.ok), tokens[0], tokens[1], cost_usd(price, *tokens), unanswered,
                      bound)


async def judge_job(sf: sessionmaker[Session], settings: Settings, job_id: str, *, mode: str | None = None,
                    retry_errors: bool = False, lease_s: float | None = None,
                    client: ModelClient | None = None, runner_id: str | None = None) -> JudgeSummary:
    """Judge every shadow pair of the job not judged yet, `settings.concurrency` pairs at a time, as runner
    `runner_id` (its heartbeat tells others whether its pairs in flight are still being judged)."""
    lease = lease_s if lease_s is not None else settings.effective_lease_s
    with sf() as session:
        if runner_id is not None:  # pairs a dead runner held: back now (counted as unanswered), not after a lease
            take_back_from_dead(session, settings, job_id, runner_id)
            session.commit()
        job = store.get_job(session, job_id)
        mode = mode or job.judge or "pair"
        todo = judgeable_ids(session, job_id, lease, retry_errors)
    spec = judge_spec(mode, settings)
    price = price_for(spec.judge_model, {**settings.price_table, **_job_prices(job.prices)})
    own = client is None
    client = client or make_judge_client(settings)
    done = {"judged": 0, "errors": 0}
    semaphore = asyncio.Semaphore(settings.concurrency)

    async def one(pair: Pair) -> None:
        async with semaphore:
            verdict, calls = await judge_pair(client, pair, mode)
        spend = attempt_spend(calls, bodies(pair, mode), price, settings)
        values = {"status": JudgmentStatus.ERROR if verdict.error else JudgmentStatus.JUDGED,
                  "verdicts": verdict.verdicts, "label": verdict.label, "strong_quality": verdict.strong,
                  "weak_quality": verdict.weak, "error": verdict.error}
        feedback = None if verdict.error else {"value": verdict.label, "judge_model": spec.judge_model,
                                               "prompt_version": spec.prompt_version}
        with sf() as session:
            stored = record_judgment(session, pair.item_id, values, feedback, spend, runner_id)
            session.commit()
        if stored:
            done["errors" if verdict.error else "judged"] += 1

    try:
        for start in range(0, len(todo), CLAIM_CHUNK):
            with sf() as session:
                pairs = claim_pairs(session, job, todo[start : start + CLAIM_CHUNK], spec, lease, retry_errors,
                                    runner_id)
                session.commit()
            await asyncio.gather(*(one(p) for p in pairs))
    finally:
        if own:
            await client.aclose()
    with sf() as session:
        counts = judgment_counts(session, job_id)
    return JudgeSummary(job_id, done["judged"], done["errors"], counts)


def _job_prices(prices: dict[str, Any] | None) -> dict[str, Price]:
    return {m: Price.model_validate(p) for m, p in (prices or {}).items()}


def run_judge(sf: sessionmaker[Session], settings: Settings, job_id: str, **options: Any) -> JudgeSummary:
    """judge_job from synchronous code (the embedded runner, the CLI), as this process's embedded runner: its
    heartbeat (shared with an embedded job it runs in) marks the pairs it claims as held by a live process."""
    with beating(sf, settings, "embedded") as heartbeat:
        return asyncio.run(judge_job(sf, settings, job_id, runner_id=heartbeat.id, **options))


def wants_judging(sf: sessionmaker[Session], job_id: str) -> bool:
    """A completed job submitted with `--judge`, with shadow pairs not judged yet."""
    with sf() as session:
        job = store.get_job(session, job_id)
        if not job.judge or job.status != JobStatus.COMPLETED:
            return False
        return bool(judgeable_ids(session, job_id, lease_s=1e9))  # pairs with no judgment yet


def judge_if_asked(sf: sessionmaker[Session], settings: Settings, job_id: str, runner_id: str | None = None
                   ) -> JudgeSummary | None:
    """The runners' hook once a job has completed: judge its shadow pairs when it asked for a judge. A resumed
    job's pairs that a dead runner (`runner_id`: this one's, alive) left in flight come back first."""
    if runner_id is not None:
        with sf() as session:
            take_back_from_dead(session, settings, job_id, runner_id)
            session.commit()
    return run_judge(sf, settings, job_id) if wants_judging(sf, job_id) else None
