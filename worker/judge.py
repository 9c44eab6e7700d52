"""The judge: an LLM reads each shadow pair (the weak answer and the strong one) and says which is better,
MT-Bench style (Zheng et al., 2023). Its verdicts become the tenant's feedback rows.

Pairwise (`pair`, the default): the question and both answers, asked twice with the answers swapped to cancel
position bias; a verdict token `[[A]]`, `[[B]]` or `[[C]]` (tie) in each reply. Two verdicts that disagree
count as a tie. Single-answer (`grade`): each answer graded 1-10 on its own (`[[rating]]`); the higher grade
wins. A reply without exactly one verdict is stored as an error, never as a label; so is a call that still
fails after the client's retries.

Calls go through the same client as item calls (worker.llm_client: its retries, backoff and timeout), at most
`concurrency` pairs at a time; each pair's row is claimed before its calls and its verdict written with its
feedback row in one transaction, so after a crash only pairs that were in flight (past their lease) are
judged again, and a judged pair never is.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db.judging import JudgeSpec, Pair, claim_pairs, judgeable_ids, judgment_counts, record_judgment
from routeyard.pricing import cost_usd, price_for
from routeyard.settings import Price, Settings
from routeyard.states import JobStatus, JudgmentStatus
from worker.llm_client import CallResult, ModelClient

MODES = ("pair", "grade")
PROMPT_VERSIONS = {"pair": "mtbench-pair-v2", "grade": "mtbench-single-v1"}
CLAIM_CHUNK = 32

PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of "
    "the responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective "
    "as possible. After providing your explanation, output your final verdict by strictly following this "
    'format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.')
PAIR_USER = ("[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
             "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
             "[The End of Assistant B's Answer]")
GRADE_USER = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your "
    "explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "
    '"[[rating]]", for example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n'
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")
JUDGE_MAX_TOKENS = 1024

_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


class Unparseable(ValueError):
    """A judge reply without exactly one verdict."""


def pair_body(question: str, answer_a: str, answer_b: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": PAIR_SYSTEM},
                         {"role": "user", "content": PAIR_USER.format(question=question, answer_a=answer_a,
                                                                      answer_b=answer_b)}],
            "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS}


def grade_body(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": GRADE_USER.format(question=question, answer=answer)}],
            "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS}


def parse_pair(reply: str | None) -> str:
    """`A`, `B` or `C` (tie); Unparseable when the reply gives no verdict or more than one."""
    found = set(_VERDICT.findall(reply or ""))
    if len(found) != 1:
        raise Unparseable("no verdict [[A]], [[B]] or [[C]] in the reply" if not found
                          else f"several verdicts in the reply: {sorted(found)}")
    return found.pop()


def parse_grade(reply: str | None) -> float:
    """The 1-10 rating; Unparseable when there is none, several, or one out of range."""
    found = set(_RATING.findall(reply or ""))
    if len(found) != 1:
        raise Unparseable("no rating [[1]]..[[10]] in the reply" if not found
                          else f"several ratings in the reply: {sorted(found)}")
    grade = float(found.pop())
    if not 1.0 <= grade <= 10.0:
        raise Unparseable(f"rating {grade:g} is outside 1-10")
    return grade


@dataclass(frozen=True)
class Verdict:
    """What the judge made of a pair: a label (1 strong needed, 0.5 tie, 0 weak as good) and each model's
    quality as an outcome, or an error."""

    label: float | None
    strong: float | None
    weak: float | None
    verdicts: dict[str, Any]
    error: str | None


def pair_verdict(first: str, second: str) -> Verdict:
    """`first`: strong as A, weak as B; `second`: swapped. Disagreement is a tie."""
    winners = ({"A": "strong", "B": "weak", "C": "tie"}[first], {"A": "weak", "B": "strong", "C": "tie"}[second])
    winner = winners[0] if winners[0] == winners[1] else "tie"
    label, strong, weak = {"strong": (1.0, 1.0, 0.0), "weak": (0.0, 0.0, 1.0), "tie": (0.5, 0.5, 0.5)}[winner]
    return Verdict(label, strong, weak, {"strong_first": first, "weak_first": second, "winner": winner}, None)


def grade_verdict(strong: float, weak: float) -> Verdict:
    label = 1.0 if strong > weak else 0.0 if strong < weak else 0.5
    return Verdict(label, strong / 10.0, weak / 10.0, {"strong": strong, "weak": weak}, None)


async def judge_pair(client: ModelClient, pair: Pair, mode: str) -> tuple[Verdict, list[CallResult]]:
    """Ask the judge about one pair (both calls at once); an error Verdict when a call failed or a reply had no
    verdict."""
    if mode == "pair":
        bodies = [pair_body(pair.prompt, pair.strong_answer, pair.weak_answer),
                  pair_body(pair.prompt, pair.weak_answer, pair.strong_answer)]
    else:
        bodies = [grade_body(pair.prompt, pair.strong_answer), grade_body(pair.prompt, pair.weak_answer)]
    results = list(await asyncio.gather(*(client.complete(b) for b in bodies)))
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
                       timeout_s=settings.request_timeout_s, secrets=settings.secrets())


@dataclass(frozen=True)
class JudgeSummary:
    job_id: str
    judged_now: int
    errors_now: int
    counts: dict[JudgmentStatus, int]


def judge_spec(mode: str, settings: Settings) -> JudgeSpec:
    return JudgeSpec(mode, settings.judge_model, PROMPT_VERSIONS[mode], settings.judge_heldout_share)


async def judge_job(sf: sessionmaker[Session], settings: Settings, job_id: str, *, mode: str | None = None,
                    retry_errors: bool = False, lease_s: float | None = None,
                    client: ModelClient | None = None) -> JudgeSummary:
    """Judge every shadow pair of the job not judged yet, `settings.concurrency` pairs at a time."""
    lease = lease_s if lease_s is not None else settings.effective_lease_s
    with sf() as session:
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
        tokens = (sum(c.prompt_tokens for c in calls), sum(c.completion_tokens for c in calls))
        values = {"status": JudgmentStatus.ERROR if verdict.error else JudgmentStatus.JUDGED,
                  "verdicts": verdict.verdicts, "label": verdict.label, "strong_quality": verdict.strong,
                  "weak_quality": verdict.weak, "error": verdict.error, "prompt_tokens": tokens[0],
                  "completion_tokens": tokens[1], "cost_usd": cost_usd(price, *tokens)}
        feedback = None if verdict.error else {"value": verdict.label, "judge_model": spec.judge_model,
                                               "prompt_version": spec.prompt_version}
        with sf() as session:
            stored = record_judgment(session, pair.item_id, values, feedback)
            session.commit()
        if stored:
            done["errors" if verdict.error else "judged"] += 1

    try:
        for start in range(0, len(todo), CLAIM_CHUNK):
            with sf() as session:
                pairs = claim_pairs(session, job, todo[start : start + CLAIM_CHUNK], spec, lease, retry_errors)
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
    """judge_job from synchronous code (the embedded runner, a Celery task, the CLI)."""
    return asyncio.run(judge_job(sf, settings, job_id, **options))


def wants_judging(sf: sessionmaker[Session], job_id: str) -> bool:
    """A completed job submitted with `--judge`, with shadow pairs not judged yet."""
    with sf() as session:
        job = store.get_job(session, job_id)
        if not job.judge or job.status != JobStatus.COMPLETED:
            return False
        return bool(judgeable_ids(session, job_id, lease_s=1e9))  # pairs with no judgment yet


def judge_if_asked(sf: sessionmaker[Session], settings: Settings, job_id: str) -> JudgeSummary | None:
    """The runners' hook once a job has completed: judge its shadow pairs when it asked for a judge."""
    return run_judge(sf, settings, job_id) if wants_judging(sf, job_id) else None
