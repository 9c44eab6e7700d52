"""What the judge is asked and how its replies are read: MT-Bench's prompts (Zheng et al., 2023), pairwise (both
orders) or single-answer grading, and the verdicts they lead to. Kept apart from the runner (worker/judge.py) so
that what a cut-off pair may have sent can be rebuilt from it (worker/judge_cut_off.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from db.judging import Pair

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


def bodies(pair: Pair, mode: str) -> list[dict[str, Any]]:
    """The judge's requests for one pair: both orders (pair mode), or each answer on its own (grade mode)."""
    if mode == "pair":
        return [pair_body(pair.prompt, pair.strong_answer, pair.weak_answer),
                pair_body(pair.prompt, pair.weak_answer, pair.strong_answer)]
    return [grade_body(pair.prompt, pair.strong_answer), grade_body(pair.prompt, pair.weak_answer)]
