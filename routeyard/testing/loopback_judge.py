"""The loopback server's LLM judge: answers the MT-Bench prompts of worker/judge_prompts.py.

A recorded verdict (`judge_verdicts[question]`: the winning answer's model, or "tie") wins; the server tells
which answer is whose because it remembers what it served. An unrecorded pair gets a verdict drawn from the
question and the two answers taken as a set, never their order: the winning *answer* is fixed, so the judge
says the same thing whichever answer it reads first, as a consistent judge does (most pairs get a clear
winner; a share is a tie). Single-answer grades come from `judge_grades[(question, model)]` or a hash. A
settable share of replies carries no verdict (`judge_unparseable_rate`), and another always says [[A]]
(`judge_position_bias`), as a position-biased judge does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

TIE_SHARE = 0.15  # of unrecorded pairs, those the judge calls a tie; the rest have a clear winner

_PAIR = re.compile(r"\[User Question\]\n(.*)\n\n\[The Start of Assistant A's Answer\]\n(.*)\n\[The End of "
                   r"Assistant A's Answer\]\n\n\[The Start of Assistant B's Answer\]\n(.*)\n\[The End of "
                   r"Assistant B's Answer\]", re.S)
_SINGLE = re.compile(r"\[Question\]\n(.*)\n\n\[The Start of Assistant's Answer\]\n(.*)\n\[The End of "
                     r"Assistant's Answer\]", re.S)


@dataclass
class JudgeBehaviour:
    verdicts: dict[str, str] = field(default_factory=dict)  # question -> the winning answer's model, or "tie"
    grades: dict[tuple[str, str], float] = field(default_factory=dict)  # (question, model) -> 1..10
    unparseable_rate: float = 0.0  # share of judge replies with no verdict token
    position_bias: float = 0.0  # share of pairwise judge replies that say [[A]] whatever the answers


def load_judge_file(path: Path, into: JudgeBehaviour) -> JudgeBehaviour:
    """JSONL rows `{"question": ..., "winner": MODEL or "tie"}` (pairwise) or `{"question": ..., "model": ...,
    "grade": 1-10}` (single-answer)."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "winner" in row:
                into.verdicts[row["question"]] = row["winner"]
            elif "grade" in row:
                into.grades[(row["question"], row["model"])] = float(row["grade"])
            else:
                raise ValueError(f"{path}:{n}: a row needs \"winner\" or \"model\" and \"grade\"")
    return into


def _draw(*parts: str) -> float:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big") / 2**64


def model_of(answer: str, served: dict[str, str]) -> str:
    """Which model gave an answer this server served (composed answers also name it: "[model] ...")."""
    if answer in served:
        return served[answer]
    return answer[1:].split("]", 1)[0] if answer.startswith("[") else ""


def judge_reply(judge: JudgeBehaviour, prompt: str, served: dict[str, str], draw: float) -> str:
    """What the judge model says: a short explanation and the verdict (or, for a share, no verdict at all)."""
    if draw < judge.unparseable_rate:
        return "Both answers have merits and flaws; it is hard to say which one is better overall."
    single = _SINGLE.search(prompt)
    if single:
        question, answer = single.group(1), single.group(2)
        model = model_of(answer, served)
        grade = judge.grades.get((question, model))
        if grade is None:
            grade = 1 + int(_draw(question, model) * 10)
        return f"The response addresses the question. Rating: [[{grade:g}]]"
    pair = _PAIR.search(prompt)
    if not pair:
        return "I can only judge a question with two answers."
    if draw < judge.unparseable_rate + judge.position_bias:
        return "Assistant A's answer comes first and is better. [[A]]"
    question, answer_a, answer_b = pair.group(1), pair.group(2), pair.group(3)
    recorded = judge.verdicts.get(question)
    if recorded is not None:
        first, second = model_of(answer_a, served), model_of(answer_b, served)
        verdict = "A" if recorded == first else "B" if recorded == second else "C"
    else:  # the same winning answer in either order: keyed by the answers as a set
        low, high = sorted((answer_a, answer_b))
        pick = _draw(question, low, high)
        winner = None if pick < TIE_SHARE or low == high else low if pick < (1 + TIE_SHARE) / 2 else high
        verdict = "C" if winner is None else "A" if winner == answer_a else "B"
    return f"Having compared both answers, my final verdict is [[{verdict}]]"
