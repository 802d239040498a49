"""The random draws the compact and natural wordings of the synthetic families share: one seeded
``random.Random`` per example, the modular family's moduli, countdown's source numbers and its
chain of operations. Pure and deterministic in their arguments; nothing here knows a wording."""
from __future__ import annotations

import random

MOD_PRIMES = (7,)
LARGE = (25, 50, 75, 100)
COUNTDOWN_MAX = 10**6


def rng_for(family: str, seed: int, index: int, difficulty: int) -> random.Random:
    """The only source of randomness for one example."""
    return random.Random(f"{family}:{seed}:{index}:{difficulty}")


def apply_op(x: int, op: str, k: int) -> int:
    """``x op k`` on Python ints, for op in ``+-*``."""
    return x + k if op == "+" else x - k if op == "-" else x * k


def countdown_ops(x: int, y: int) -> list[str]:
    """Operations allowed on ``x >= y`` that keep the result in 1..10**6 and are not no-ops."""
    ops = []
    if x + y <= COUNTDOWN_MAX:
        ops.append("+")
    if x > y:
        ops.append("-")
    if y > 1 and x * y <= COUNTDOWN_MAX:
        ops.append("*")
    return ops


def countdown_chain(rng: random.Random, nums: list[int]) -> tuple[list[tuple[int, str, int, int]], int]:
    """Combine ``nums`` two at a time (random pair, random allowed op) until one number is left:
    the steps (x, op, y, z) with x >= y, and the target z of the last one."""
    pool, chain = list(nums), []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        x, y = max(pool[i], pool[j]), min(pool[i], pool[j])
        op = rng.choice(countdown_ops(x, y) or ["-"])  # "-" on equal values yields 0 >= 0
        z = apply_op(x, op, y)
        for k in sorted((i, j), reverse=True):
            pool.pop(k)
        pool.append(z)
        chain.append((x, op, y, z))
    return chain, pool[0]
