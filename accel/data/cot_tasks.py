"""Arithmetic word problems with known answers, for measuring chain-of-thought acceleration offline.

The set is generated, not downloaded: `arithmetic_tasks(n, seed)` draws names, items and numbers from a
seeded `random.Random`, so the same (n, seed) always gives the same problems. Each problem takes one or two
operations (+, -, x, /) on small non-negative integers, and its answer is a non-negative integer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["INSTRUCTION", "CoTTask", "arithmetic_tasks", "extract_answer"]

INSTRUCTION = "Solve the problem step by step. End with 'Answer:' followed by the number."

NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma")
ITEMS = ("apples", "marbles", "pencils", "cookies", "stickers", "books", "cards", "shells")

_INTEGER = re.compile(r"-?\d+")
_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class CoTTask:
    """One word problem and its integer answer."""

    question: str
    answer: int

    @property
    def prompt(self) -> str:
        """The user turn: the step-by-step instruction, then the question."""
        return f"{INSTRUCTION}\n\n{self.question}"


def extract_answer(text: str) -> int | None:
    """The answer a reasoning text gives: the last integer on the line after the last 'Answer:' (any case;
    "Answer: 3 + 4 = 7" gives 7), else the last integer in the text; None when it has no integer."""
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        line = text[marks[-1].end() :].lstrip().split("\n", 1)[0]
        numbers = _INTEGER.findall(line)
        if numbers:
            return int(numbers[-1])
    numbers = _INTEGER.findall(text)
    return int(numbers[-1]) if numbers else None


def _buy(rng: random.Random, name: str, item: str) -> CoTTask:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    return CoTTask(f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?", a + b)


def _give(rng: random.Random, name: str, item: str) -> CoTTask:
    a = rng.randint(5, 30)
    b = rng.randint(1, a - 1)
    friend = rng.choice([n for n in NAMES if n != name])
    return CoTTask(f"{name} has {a} {item} and gives {b} of them to {friend}. How many {item} does {name} have "
                   "left?", a - b)


def _bags(rng: random.Random, name: str, item: str) -> CoTTask:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return CoTTask(f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?", a * b)


def _share(rng: random.Random, name: str, item: str) -> CoTTask:
    friends, each = rng.randint(2, 6), rng.randint(2, 9)
    return CoTTask(f"{name} shares {friends * each} {item} equally among {friends} friends. How many {item} "
                   "does each friend get?", each)


def _two_step(rng: random.Random, name: str, item: str) -> CoTTask:
    a, b = rng.randint(5, 20), rng.randint(2, 15)
    c = rng.randint(1, a + b - 1)
    return CoTTask(f"{name} has {a} {item}, buys {b} more and then gives away {c}. How many {item} does {name} "
                   "have left?", a + b - c)


KINDS: tuple[Callable[[random.Random, str, str], CoTTask], ...] = (_buy, _give, _bags, _share, _two_step)


def arithmetic_tasks(n: int = 20, seed: int = 0) -> list[CoTTask]:
    """n word problems, cycling through the kinds (add, subtract, multiply, divide, two steps)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = random.Random(seed)
    return [KINDS[i % len(KINDS)](rng, rng.choice(NAMES), rng.choice(ITEMS)) for i in range(n)]
