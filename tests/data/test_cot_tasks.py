"""The generated word problems are deterministic and their answers are right; answer extraction."""

from __future__ import annotations

import re

import pytest

from accel.data.cot_tasks import INSTRUCTION, KINDS, arithmetic_tasks, extract_answer


def test_tasks_are_deterministic_per_seed() -> None:
    assert arithmetic_tasks(10, seed=3) == arithmetic_tasks(10, seed=3)
    assert arithmetic_tasks(10, seed=3) != arithmetic_tasks(10, seed=4)
    assert arithmetic_tasks(5) == arithmetic_tasks(20)[:5]


def test_answers_follow_from_the_numbers_in_each_question() -> None:
    solve = {
        "_buy": lambda n: n[0] + n[1],
        "_give": lambda n: n[0] - n[1],
        "_bags": lambda n: n[0] * n[1],
        "_share": lambda n: n[0] // n[1],
        "_two_step": lambda n: n[0] + n[1] - n[2],
    }
    for i, task in enumerate(arithmetic_tasks(40, seed=1)):
        numbers = [int(x) for x in re.findall(r"\d+", task.question)]
        kind = KINDS[i % len(KINDS)].__name__
        assert task.answer == solve[kind](numbers) >= 0, task
        if kind == "_share":
            assert numbers[0] % numbers[1] == 0, task
        assert task.prompt == f"{INSTRUCTION}\n\n{task.question}"


def test_task_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        arithmetic_tasks(0)


@pytest.mark.parametrize(("text", "answer"), [
    ("3 + 4 = 7 apples.", 7),
    ("Answer: 12.\nCheck: 12 - 5 = 7", 12),
    ("Answer: 14 + 3 = 17\nMore text 99", 17),
    ("first answer: 2, then ANSWER : -3 apples", -3),
    ("She has 3 apples. Answer:", 3),  # nothing after the mark: the last integer
    (" 24\nsomething 5", 5),
    ("no number here", None),
])
def test_extract_answer(text: str, answer: int | None) -> None:
    assert extract_answer(text) == answer
