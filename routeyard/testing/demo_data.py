"""The demo's batch: a few hundred made-up prompts, easy and hard, in the OpenAI Batch API input format,
with two malformed lines in it to show that a bad line is reported and skipped, not fatal."""

from __future__ import annotations

import json
import random
from pathlib import Path

_EASY = [
    "Say hello to {name} in a friendly way.",
    "Translate 'good morning' into {lang}.",
    "What is the capital of {country}?",
    "Give me a synonym for '{word}'.",
    "Write a one-line birthday wish for {name}.",
    "What colour is a ripe {fruit}?",
    "Spell the word '{word}' backwards.",
    "Suggest a name for a pet {animal}.",
]
_HARD = [
    ("A train leaves at {h}:00 travelling {v1} km/h; a second train leaves the same station {d} hours later at "
     "{v2} km/h on the same track. At what time does the second train catch up, and how far from the station?"),
    ("A shop sells pens at ${p} each or {k} for ${q}. {name} needs {n} pens and has a coupon for 15% off orders "
     "above $20. What is the cheapest way to buy them and how much does it cost? Show each step."),
    "Prove that the sum of the first {n} odd numbers is a perfect square, then generalise the argument.",
    ("Write a Python function that returns the {n}th Fibonacci number in O(log n) time using matrix "
     "exponentiation, and explain why it is correct."),
    ("In a {n}-person round-robin chess tournament every pair plays once; a win is 1 point, a draw half. "
     "If the winner scored {k} points, what is the smallest possible score of the last player? Justify it."),
    ("Explain, with the relevant equations, why the period of a pendulum of length {k} cm does not depend on "
     "its mass, and estimate the period on the Moon."),
    ("A lesion compressing the facial nerve at the stylomastoid foramen causes which deficits? Reason through "
     "the branches that leave the nerve before and after that point."),
    ("Design a SQL schema for a library with members, books, copies and loans, and write a query for the "
     "{n} members with the most overdue loans last month."),
]
_FILL = {
    "name": ["Ada", "Grace", "Alan", "Linus", "Barbara", "Edsger"],
    "lang": ["French", "German", "Spanish", "Italian", "Japanese"],
    "country": ["France", "Japan", "Kenya", "Peru", "Canada", "Norway"],
    "word": ["happy", "quick", "bright", "calm", "large"],
    "fruit": ["banana", "tomato", "lime", "plum"],
    "animal": ["cat", "parrot", "tortoise", "hamster"],
}


def _fill(template: str, rng: random.Random) -> str:
    values: dict[str, object] = {k: rng.choice(v) for k, v in _FILL.items()}
    values.update(h=rng.randint(6, 11), v1=rng.randint(60, 90), v2=rng.randint(95, 140), d=rng.randint(1, 3),
                  p=rng.randint(2, 5), k=rng.randint(6, 12), q=rng.randint(14, 30), n=rng.randint(8, 40))
    return template.format(**values)


def write_demo_batch(path: Path, n: int = 200, seed: int = 7) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            template = rng.choice(_HARD if rng.random() < 0.35 else _EASY)
            line = {"custom_id": f"demo-{i:04d}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "any", "max_tokens": 400,
                             "messages": [{"role": "user", "content": _fill(template, rng)}]}}
            f.write(json.dumps(line) + "\n")
            if i == n // 3:
                f.write('{"custom_id": "demo-broken", "method": "POST", "body": {"messages": [\n')
            if i == 2 * n // 3:
                f.write(json.dumps({"custom_id": "demo-no-prompt", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"messages": []}}) + "\n")
    return path
