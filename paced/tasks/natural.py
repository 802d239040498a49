"""Natural-language versions of the synthetic families (``style: natural``), for pretrained chat
models: plain questions with plain numbers (not reversed, not zero-padded) and short worked
solutions in prose. ``paced.tasks.synthetic.make_example(..., style="natural")`` dispatches here;
the formats are documented in that module's docstring.

Every example is a pure function of ``(family, seed, index, difficulty, hint_level,
answer_format)``: randomness comes from ``random.Random(f"{family}/natural:{seed}:{index}:{d}")``,
a stream of its own, so a natural problem is not the compact problem of the same index reworded.
Ids are ``f"{family}/natural/d{d}/s{seed}/{index}"`` and ``source`` is ``f"{family}/natural"``.

The solution (an SFT target) ends with one line that states the answer the way the source's
``answer_format`` reads it (``FINAL_LINES``); every line before it that holds an ``=`` ends with
that line's result, so the ``auto`` chain (the rest of the line after the last ``=``) reads the
answer too.
"""
from __future__ import annotations

import math
from typing import Callable

from paced.tasks.base import Example
from paced.tasks.draws import LARGE, MOD_PRIMES, apply_op, countdown_chain, rng_for

__all__ = ["FINAL_LINES", "NATURAL", "final_line"]

# answer_format -> the solution's last line ({a}: the answer).
FINAL_LINES = {
    "auto": "The answer is {a}.",
    "boxed": "The answer is \\boxed{{{a}}}.",
    "last_number": "The answer is {a}.",
    "gsm8k": "#### {a}",
    "answer_is": "The answer is: {a}",
    "regex": "The answer is {a}.",
}
_OP_WORDS = {"+": "add {k}", "-": "subtract {k}", "*": "multiply by {k}"}


def final_line(answer: str, answer_format: str = "auto") -> str:
    """The solution's closing line for ``answer_format`` (unknown formats: the ``auto`` line)."""
    return FINAL_LINES.get(answer_format, FINAL_LINES["auto"]).format(a=answer)


def _example(family: str, seed: int, index: int, d: int, fmt: str, *, prompt: str, answer: str,
             solution: str, hint: str | None, verifier: str = "numeric",
             meta: dict | None = None) -> Example:
    return Example(
        id=f"{family}/natural/d{d}/s{seed}/{index}", prompt=prompt, answer=answer, hint=hint,
        solution=solution, verifier=verifier, source=f"{family}/natural", difficulty=d,
        answer_format=fmt, meta={"style": "natural", **(meta or {})},
    )


def _digits_hint(answer: str, level: int) -> str | None:
    """Level 1: the answer's digit count; 2, 3: plus its first ``ceil((level-1)(L-1)/2)`` digits
    (L = its length), so never the whole answer. Each level is a prefix of the next."""
    if level == 0:
        return None
    n = len(answer)
    k = min(math.ceil((level - 1) * (len(answer) - 1) / 2), len(answer) - 1)
    hint = f"The answer has {n} digit{'s' if n > 1 else ''}"
    return hint + (f" and starts {answer[:k]}" if k > 0 else "")


def _steps_hint(steps: list[str], level: int, cap: int, sep: str) -> str | None:
    """``"Begin with "`` plus the first ``max(1, min(level, cap))`` steps joined by ``sep``."""
    if level == 0:
        return None
    return "Begin with " + sep.join(steps[:max(1, min(level, cap))])


def _digits(name: str, op: str) -> Callable[..., Example]:
    """``add`` / ``sub`` / ``mul1``: "What is 57 + 35?" -> "92" (d-digit operands, b one digit for
    mul1, a >= b for sub); solution ``"57 + 35 = 92.\\n" + final_line``."""

    def make(seed: int, index: int, d: int, hint_level: int, fmt: str = "auto") -> Example:
        rng = rng_for(f"{name}/natural", seed, index, d)
        lo = 0 if d == 1 else 10 ** (d - 1)  # exactly d digits
        a = rng.randrange(lo, 10**d)
        b = rng.randrange(10) if op == "*" else rng.randrange(lo, 10**d)
        if op == "-":
            a, b = max(a, b), min(a, b)
        answer = str(a + b if op == "+" else a - b if op == "-" else a * b)
        return _example(name, seed, index, d, fmt, prompt=f"What is {a} {op} {b}?", answer=answer,
                        solution=f"{a} {op} {b} = {answer}.\n" + final_line(answer, fmt),
                        hint=_digits_hint(answer, hint_level), meta={"a": a, "b": b})

    return make


def _make_modular(seed: int, index: int, d: int, hint_level: int, fmt: str = "auto") -> Example:
    """"Start with 3. Add 4, then multiply by 5, ..., working modulo 7 (take the remainder after
    each step). What number do you end with?"; solution one ``"(3 + 4) mod 7 = 0."`` line per step."""
    rng = rng_for("modular/natural", seed, index, d)
    m = rng.choice(MOD_PRIMES)
    x = rng.randrange(m)
    start, words, steps = x, [], []
    for _ in range(d):
        op, k = rng.choice("+-*"), rng.randint(1, 9)
        y = apply_op(x, op, k) % m
        words.append(_OP_WORDS[op].format(k=k))
        steps.append(f"({x} {op} {k}) mod {m} = {y}")
        x = y
    answer = str(x)
    todo = ", then ".join(words)
    prompt = (f"Start with {start}. {todo[0].upper() + todo[1:]}, working modulo {m} (take the "
              f"remainder after each step). What number do you end with?")
    return _example("modular", seed, index, d, fmt, prompt=prompt, answer=answer,
                    solution="\n".join(s + "." for s in steps) + "\n" + final_line(answer, fmt),
                    hint=_steps_hint(steps, hint_level, d - 1, "; "), meta={"m": m})


def _make_countdown(seed: int, index: int, d: int, hint_level: int, fmt: str = "auto") -> Example:
    """"Use the numbers 3, 25 and 7 (each at most once) with +, - and * to make 82. ..."; the
    solution is the steps ``"25 * 3 = 75, 75 + 7 = 82"`` (verify_countdown's format, which has no
    final-answer line: ``answer_format`` does not change it). Sources and target are in ``meta``."""
    rng = rng_for("countdown/natural", seed, index, d)
    nums = [rng.choice(LARGE) if rng.random() < 0.25 else rng.randint(1, 10) for _ in range(d)]
    chain, target = countdown_chain(rng, nums)
    steps = [f"{x} {op} {y} = {z}" for x, op, y, z in chain]
    listed = ", ".join(map(str, nums[:-1])) + f" and {nums[-1]}"
    prompt = (f"Use the numbers {listed} (each at most once) with +, - and * to make {target}. "
              f"Write only the steps, separated by commas, e.g. 2 + 3 = 5, 5 * 4 = 20.")
    return _example("countdown", seed, index, d, fmt, prompt=prompt, answer=str(target),
                    solution=", ".join(steps), hint=_steps_hint(steps, hint_level, d - 2, ", "),
                    verifier="countdown", meta={"numbers": nums, "target": target})


# family -> make(seed, index, difficulty, hint_level, answer_format); ranges are the compact ones.
NATURAL: dict[str, Callable[..., Example]] = {
    "add": _digits("add", "+"),
    "sub": _digits("sub", "-"),
    "mul1": _digits("mul1", "*"),
    "modular": _make_modular,
    "countdown": _make_countdown,
}
