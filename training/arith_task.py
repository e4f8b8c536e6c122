"""The task the shipped pair is trained on: readable English arithmetic, generated.

Plain questions ("Question: What is 47 plus 38?" / "Answer: 47 plus 38 is
85.") and word problems with one- or two-step answers ("First, 6 times 7 is
42. Then 42 minus 5 is 37. The answer is 37."), every prompt ending in
"Answer:".  The numbers are small (operands and results up to 40, the 2..9
times table), so every arithmetic fact is seen in training, inside other
questions.  ``held_out_sets`` draws the shipped prompt files,
``training_corpus`` the training text, which never contains a held-out
question.  Seeded and pure: no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

NAMES = [("Tom", "he"), ("Anna", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"),
         ("Lucy", "she"), ("Max", "he"), ("Emma", "she"), ("Leo", "he"), ("Sara", "she"),
         ("Jack", "he"), ("Nina", "she")]
ITEMS = ["apples", "pencils", "stickers", "cookies", "marbles", "books", "cards", "stamps",
         "shells", "balloons"]
CONTAINERS = {"box": "boxes", "bag": "bags", "pack": "packs", "jar": "jars"}
ANIMALS = ["cows", "pigs", "sheep", "goats", "ducks", "horses"]
MAX_VALUE = 40           # every operand and every result stays within 0..40 ...
TIMES_RANGE = (2, 9)     # ... except in the times table, 2..9 x 2..9


@dataclass(frozen=True)
class Problem:
    kind: str                                   # "arith" or a word-problem template name
    prompt: str                                 # ends with "Answer:"
    completion: str                             # " ... ." + "\n" (EOS is added by training)
    answer: int
    steps: tuple[tuple[str, int, int], ...]     # (op, a, b) of every step
    key: tuple                                  # template + numbers, identifies the problem


def _fact(op: str, a: int, b: int) -> int:
    return {"plus": a + b, "minus": a - b, "times": a * b}[op]


def plain_question(op: str, a: int, b: int) -> Problem:
    r = _fact(op, a, b)
    return Problem("arith", f"Question: What is {a} {op} {b}?\nAnswer:",
                   f" {a} {op} {b} is {r}.\n", r, ((op, a, b),), ("arith", op, a, b))


def random_triple(rng: random.Random, op: str) -> tuple[int, int]:
    if op == "plus":
        a = rng.randint(1, MAX_VALUE - 1)
        return a, rng.randint(1, MAX_VALUE - a)
    if op == "minus":
        a = rng.randint(2, MAX_VALUE)
        return a, rng.randint(1, a - 1)
    return rng.randint(*TIMES_RANGE), rng.randint(*TIMES_RANGE)


def _small_product(rng: random.Random) -> tuple[int, int]:
    while True:
        a, b = rng.randint(*TIMES_RANGE), rng.randint(*TIMES_RANGE)
        if a * b <= MAX_VALUE:
            return a, b


def _two_steps(first: str, a: int, b: int, second: str, c: int):
    """The answer of a two-step word problem: (completion, result, steps)."""
    s = _fact(first, a, b)
    r = _fact(second, s, c)
    completion = (f" First, {a} {first} {b} is {s}. Then {s} {second} {c} is {r}. "
                  f"The answer is {r}.\n")
    return completion, r, ((first, a, b), (second, s, c))


TEMPLATES = ["have_plus", "give_minus", "box_times", "buy_give", "bags_away", "read_days",
             "farm", "birds"]


def word_problem(rng: random.Random, template: str) -> Problem:
    """One word problem; numbers, names and items drawn from ``rng``."""
    name, pron = rng.choice(NAMES)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    item = rng.choice(ITEMS)
    Pron = pron.capitalize()
    if template == "have_plus":
        a, b = random_triple(rng, "plus")
        r = a + b
        prompt = (f"Question: {name} has {a} {item} and buys {b} more. "
                  f"How many {item} does {pron} have now?\nAnswer:")
        completion = f" {name} has {a} plus {b} is {r} {item}. The answer is {r}.\n"
        steps, key = (("plus", a, b),), (a, b)
    elif template == "give_minus":
        a, b = random_triple(rng, "minus")
        r = a - b
        prompt = (f"Question: {name} has {a} {item} and gives {b} of them to {friend}. "
                  f"How many {item} does {name} have left?\nAnswer:")
        completion = f" {name} has {a} minus {b} is {r} {item} left. The answer is {r}.\n"
        steps, key = (("minus", a, b),), (a, b)
    elif template == "box_times":
        a, b = rng.randint(*TIMES_RANGE), rng.randint(*TIMES_RANGE)
        box = rng.choice(list(CONTAINERS))
        r = a * b
        prompt = (f"Question: A {box} holds {a} {item}. {name} buys {b} {CONTAINERS[box]}. "
                  f"How many {item} does {name} get?\nAnswer:")
        completion = f" {name} gets {b} times {a} is {r} {item}. The answer is {r}.\n"
        steps, key = (("times", b, a),), (a, b)
    elif template == "buy_give":
        a, b = random_triple(rng, "plus")
        s = a + b
        c = rng.randint(1, s - 1)
        prompt = (f"Question: {name} has {a} {item}. {Pron} buys {b} more and then gives "
                  f"{c} to {friend}. How many {item} does {name} have now?\nAnswer:")
        completion, r, steps = _two_steps("plus", a, b, "minus", c)
        key = (a, b, c)
    elif template == "bags_away":
        a, b = _small_product(rng)
        s = a * b
        c = rng.randint(1, s - 1)
        box = rng.choice(list(CONTAINERS))
        prompt = (f"Question: {name} buys {a} {CONTAINERS[box]} with {b} {item} in each {box}. "
                  f"{Pron} gives away {c} of them. How many {item} are left?\nAnswer:")
        completion, r, steps = _two_steps("times", a, b, "minus", c)
        key = (a, b, c)
    elif template == "read_days":
        while True:
            a, b = _small_product(rng)
            s = a * b
            if s < MAX_VALUE:
                break
        c = rng.randint(1, MAX_VALUE - s)
        prompt = (f"Question: {name} reads {a} pages every day for {b} days and then "
                  f"{c} more pages. How many pages does {name} read in total?\nAnswer:")
        completion, r, steps = _two_steps("times", a, b, "plus", c)
        key = (a, b, c)
    elif template == "farm":
        first, second = rng.sample(ANIMALS, 2)
        a = rng.randint(1, MAX_VALUE - 10)
        b = rng.randint(1, MAX_VALUE - 1 - a)
        s = a + b
        c = rng.randint(1, MAX_VALUE - s)
        prompt = (f"Question: A farm has {a} {first}, {b} {second} and {c} chickens. "
                  f"How many animals are on the farm?\nAnswer:")
        completion, r, steps = _two_steps("plus", a, b, "plus", c)
        key = (a, b, c, first, second)
    elif template == "birds":
        a = rng.randint(3, MAX_VALUE)
        b = rng.randint(1, a - 2)
        s = a - b
        c = rng.randint(1, s - 1)
        fly_b, fly_c = ("bird flies" if b == 1 else "birds fly"), ("flies" if c == 1 else "fly")
        prompt = (f"Question: There are {a} birds in a tree. {b} {fly_b} away and then "
                  f"{c} more {fly_c} away. How many birds are left in the tree?\nAnswer:")
        completion, r, steps = _two_steps("minus", a, b, "minus", c)
        key = (a, b, c)
    else:
        raise ValueError(template)
    return Problem(template, prompt, completion, r, steps, (template, *key))


def held_out_sets(seed: int, n_arith: int, n_free: int) -> tuple[list[Problem], list[Problem]]:
    """The shipped prompts: plain questions and word problems never used for training."""
    rng = random.Random(seed * 1000 + 17)
    arith: list[Problem] = []
    seen: set = set()
    quota = {"plus": n_arith * 2 // 5, "minus": n_arith * 2 // 5}
    quota["times"] = n_arith - quota["plus"] - quota["minus"]
    for op, count in quota.items():
        while count:
            problem = plain_question(op, *random_triple(rng, op))
            if problem.key in seen:
                continue
            seen.add(problem.key)
            arith.append(problem)
            count -= 1
    rng.shuffle(arith)
    free: list[Problem] = []
    while len(free) < n_free:
        problem = word_problem(rng, TEMPLATES[len(free) % len(TEMPLATES)])
        if problem.key not in seen:
            seen.add(problem.key)
            free.append(problem)
    rng.shuffle(free)
    return arith, free


def training_corpus(seed: int, count: int, held_arith: Sequence[Problem],
                    held_free: Sequence[Problem]) -> list[Problem]:
    """``count`` training problems, none of them a held-out question.

    The arithmetic facts themselves are not held out: a held-out "What is 17
    plus 8?" may still meet "17 plus 8 is 25" inside a word problem's answer.
    """
    rng = random.Random(seed * 1000 + 29)
    banned_keys = {p.key for p in held_arith} | {p.key for p in held_free}
    banned_prompts = {p.prompt for p in held_arith} | {p.prompt for p in held_free}
    corpus: list[Problem] = []
    while len(corpus) < count:
        roll = rng.random()
        if roll < 0.45:
            op = rng.choices(["plus", "minus", "times"], weights=[4, 4, 2])[0]
            problem = plain_question(op, *random_triple(rng, op))
        else:
            problem = word_problem(rng, rng.choice(TEMPLATES))
        if problem.key in banned_keys or problem.prompt in banned_prompts:
            continue
        corpus.append(problem)
    return corpus


def prompt_rows(problems: Sequence[Problem], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i + 1}", "prompt": p.prompt, "answer": str(p.answer)}
            for i, p in enumerate(problems)]
