"""Built-in synthetic verifiable task families for tiny character-level language models (and,
``style="natural"``, for pretrained chat models: see the end of this docstring).

Every string produced here uses only printable ASCII (and, compact, no newlines). Every example is a pure
function of ``(family, seed, index, difficulty, hint_level)``: randomness comes from
``random.Random(f"{family}:{seed}:{index}:{difficulty}")`` (string seeds are stable across
processes), never from the global RNG or ``hash()``.

Numbers in the digit families are zero-padded to one fixed width, ``WIDTH`` = 8, whatever the
difficulty, and written least-significant digit first (``rev``): a pilot found that tiny models
learn carries only in this format (a fixed width keeps the digits of a and b at fixed positions;
a width that grows with the difficulty left a 1M-parameter model near chance after 500 steps).
Formats, with ``rev(x, w)`` = ``x`` zero-padded to ``w`` digits and reversed:

``add`` (d = digits of the operands, 1..8: a, b drawn with exactly d digits, 0..9 at d = 1)
    prompt ``f"{rev(a,8)}+{rev(b,8)}="``, answer = solution = ``rev(a+b, 9)``.
``sub`` (d = digits, 1..8, a >= b)
    prompt ``f"{rev(a,8)}-{rev(b,8)}="``, answer = solution = ``rev(a-b, 8)``.
``mul1`` (d = digits of a, 1..8, b a single digit 0..9)
    prompt ``f"{rev(a,8)}*{b}="``, answer = solution = ``rev(a*b, 9)``.
    Hint (these three): ``f"starts {answer[:ceil(level * (d + 1) / 4)]}"`` — a share of the
    answer's significant digits, so a hint is as strong at d = 2 as at d = 8.
``modular`` (d = number of operations, 1..10)
    prompt ``f"{x0}{op1}{k1}...{opd}{kd}%{m}="`` with ``x0`` in 0..m-1, ops in ``+-*`` and
    single-digit ``k`` in 1..9, evaluated left to right modulo ``m`` (e.g. ``"0-6-6*8%7="``).
    Solution: the running values after each operation joined by ``","``, then ``"="`` and the
    final value (``"1,2,2=2"``); answer = final value. Hint: ``f"starts {v1},...,{vk}"`` with
    ``k = max(1, min(level, d - 1))`` running values, so it never states the answer except at d = 1.
    ``m`` comes from ``MOD_PRIMES`` = (7,): with six moduli (7..23) a 1.1M-parameter model stayed
    at chance (pass@1 0.07 at every d) after 2,000 SFT steps; with m = 7 alone it reached 0.95 at
    d = 1 after 800 steps, falling to 0.1-0.3 at d >= 2.
``countdown`` (d = number of source numbers, 2..6)
    prompt ``f"{' '.join(nums)}:{target}="`` (e.g. ``"3 25 7:82="``); numbers are drawn from 1..10
    and, with probability 1/4 each, from (25, 50, 75, 100). The solution combines all of them with
    ``+ - *`` in ``d - 1`` steps ``"x op y=z"`` joined by ``","`` (``"25*3=75,75+7=82"``);
    intermediates stay in 0..10**6. answer = ``str(target)``. Hint: ``f"starts {first k steps}"``
    with ``k = max(1, min(level, d - 2))``, so it never states the whole solution except at d = 2.

``hint_level`` 0 gives ``hint=None``; levels 1..3 give non-decreasing (and, whenever the caps above
leave room, strictly stronger) hints, each a prefix of the next.

``style="natural"`` (``paced.tasks.natural``, for pretrained chat models) words the same families
as plain questions with plain numbers; ids ``f"{family}/natural/d{d}/s{seed}/{index}"``, source
``f"{family}/natural"``, its own random stream, verifier ``numeric`` (countdown: ``countdown``).
The solution's last line is ``FINAL_LINES[answer_format]`` ("The answer is 92.", boxed
"The answer is \\boxed{92}.", gsm8k "#### 92", answer_is "The answer is: 92"); it may hold
newlines.

``add`` / ``sub`` / ``mul1``
    ``"What is 57 + 35?"`` (``-``, ``*``; the same operand ranges), answer ``"92"``, solution
    ``"57 + 35 = 92.\\n" + last line``. Hint: ``"The answer has 2 digits"``, and from level 2
    ``" and starts 9"``: the first ``ceil((level - 1) * (L - 1) / 2)`` of its L digits, so never all.
``modular``
    ``"Start with 3. Add 4, then multiply by 5, working modulo 7 (take the remainder after each
    step). What number do you end with?"``; solution one ``"(3 + 4) mod 7 = 0."`` line per step,
    then the last line. Hint: ``"Begin with "`` + the first ``max(1, min(level, d - 1))`` steps
    joined by ``"; "``.
``countdown``
    ``"Use the numbers 3, 25 and 7 (each at most once) with +, - and * to make 82. Write only the
    steps, separated by commas, e.g. 2 + 3 = 5, 5 * 4 = 20."``; solution ``"25 * 3 = 75, 75 + 7 =
    82"`` (no last line: verify_countdown reads steps), ``meta`` holds ``numbers`` and ``target``.
    Hint: ``"Begin with "`` + the first ``max(1, min(level, d - 2))`` steps joined by ``", "``.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable

from paced.tasks.base import Example
from paced.tasks.draws import LARGE, MOD_PRIMES, apply_op, countdown_chain, rng_for
from paced.tasks.natural import NATURAL

__all__ = ["Family", "FAMILIES", "make_example", "generate", "verify_countdown"]

MAX_HINT_LEVEL = 3
WIDTH = 8  # fixed operand width of the digit families

# Hostile-input limits for verify_countdown.
_MAX_COMPLETION_CHARS = 2000
_MAX_STEPS = 20
_STEP_RE = re.compile(r"\s*([0-9]{1,12})\s*([+*-])\s*([0-9]{1,12})\s*=\s*([0-9]{1,25})\s*")
_COUNTDOWN_PROMPT_RE = re.compile(r"([0-9]{1,12}(?: [0-9]{1,12})*):([0-9]{1,25})=")


@dataclass(frozen=True)
class Family:
    """A synthetic task family: an example factory plus its valid difficulty knob values."""

    make: Callable[[int, int, int, int], Example]  # (seed, index, difficulty, hint_level)
    difficulty_range: tuple[int, int]               # inclusive (lo, hi)
    description: str


def _rev(x: int, width: int) -> str:
    """``x`` zero-padded to ``width`` digits, least-significant digit first."""
    return str(x).zfill(width)[::-1]


def _example(family: str, seed: int, index: int, difficulty: int, *, prompt: str, answer: str,
             solution: str, hint: str | None, verifier: str = "exact",
             meta: dict | None = None) -> Example:
    return Example(
        id=f"{family}/d{difficulty}/s{seed}/{index}", prompt=prompt, answer=answer, hint=hint,
        solution=solution, verifier=verifier, source=family, difficulty=difficulty,
        meta=meta or {},
    )


def _prefix_hint(answer: str, level: int, significant: int) -> str | None:
    """``"starts "`` plus the first ``ceil(level * significant / 4)`` answer characters."""
    if level == 0:
        return None
    return f"starts {answer[:math.ceil(level * significant / 4)]}"


def _steps_hint(steps: list[str], level: int, cap: int) -> str | None:
    """``"starts "`` plus the first ``max(1, min(level, cap))`` comma-joined steps."""
    if level == 0:
        return None
    return "starts " + ",".join(steps[:max(1, min(level, cap))])


def _digits_family(name: str, op: str) -> Callable[[int, int, int, int], Example]:
    """Factory for the fixed-width, LSB-first digit families ``add``, ``sub`` and ``mul1``."""

    def make(seed: int, index: int, d: int, hint_level: int) -> Example:
        rng = rng_for(name, seed, index, d)
        lo = 0 if d == 1 else 10 ** (d - 1)  # exactly d digits
        a = rng.randrange(lo, 10**d)
        if op == "*":
            b = rng.randrange(10)
            prompt, answer = f"{_rev(a, WIDTH)}*{b}=", _rev(a * b, WIDTH + 1)
        else:
            b = rng.randrange(lo, 10**d)
            if op == "+":
                answer = _rev(a + b, WIDTH + 1)
            else:
                a, b = max(a, b), min(a, b)
                answer = _rev(a - b, WIDTH)
            prompt = f"{_rev(a, WIDTH)}{op}{_rev(b, WIDTH)}="
        return _example(name, seed, index, d, prompt=prompt, answer=answer, solution=answer,
                        hint=_prefix_hint(answer, hint_level, d + 1), meta={"a": a, "b": b})

    return make


def _make_modular(seed: int, index: int, d: int, hint_level: int) -> Example:
    """Left-to-right chain of ``d`` single-digit operations modulo ``m``."""
    rng = rng_for("modular", seed, index, d)
    m = rng.choice(MOD_PRIMES)
    x = rng.randrange(m)
    prompt = str(x)
    values: list[str] = []
    for _ in range(d):
        op, k = rng.choice("+-*"), rng.randint(1, 9)
        prompt += f"{op}{k}"
        x = apply_op(x, op, k) % m
        values.append(str(x))
    prompt += f"%{m}="
    answer = values[-1]
    return _example("modular", seed, index, d, prompt=prompt, answer=answer,
                    solution=",".join(values) + "=" + answer,
                    hint=_steps_hint(values, hint_level, d - 1), meta={"m": m})


def _make_countdown(seed: int, index: int, d: int, hint_level: int) -> Example:
    """Combine all ``d`` source numbers with ``+ - *`` into a target; solution lists the steps."""
    rng = rng_for("countdown", seed, index, d)
    nums = [rng.choice(LARGE) if rng.random() < 0.25 else rng.randint(1, 10) for _ in range(d)]
    chain, target = countdown_chain(rng, nums)
    steps = [f"{x}{op}{y}={z}" for x, op, y, z in chain]
    return _example("countdown", seed, index, d,
                    prompt=f"{' '.join(map(str, nums))}:{target}=", answer=str(target),
                    solution=",".join(steps), hint=_steps_hint(steps, hint_level, d - 2),
                    verifier="countdown", meta={"numbers": nums})


FAMILIES: dict[str, Family] = {
    "add": Family(_digits_family("add", "+"), (1, WIDTH),
                  "d-digit addition, operands and sum zero-padded and written LSB first"),
    "sub": Family(_digits_family("sub", "-"), (1, WIDTH),
                  "d-digit subtraction a-b with a >= b, zero-padded and written LSB first"),
    "mul1": Family(_digits_family("mul1", "*"), (1, WIDTH),
                   "d-digit number times one digit, zero-padded and written LSB first"),
    "modular": Family(_make_modular, (1, 10),
                      "chain of d single-digit + - * operations modulo 7"),
    "countdown": Family(_make_countdown, (2, 6),
                        "reach a target by combining d numbers with + - *"),
}


def _family(family: str) -> Family:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def _check_difficulty(family: str, difficulty: int) -> None:
    lo, hi = _family(family).difficulty_range
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or not lo <= difficulty <= hi:
        raise ValueError(f"difficulty for {family!r} must be an int in [{lo}, {hi}], "
                         f"got {difficulty!r}")


def make_example(family: str, seed: int, index: int, difficulty: int,
                 hint_level: int = 1, style: str = "compact", answer_format: str = "auto") -> Example:
    """One example of ``family`` in ``style`` (compact | natural); deterministic in all arguments.
    ``answer_format`` is stored on the example (and picks a natural solution's last line).

    Raises ``ValueError`` for an unknown family or style, a difficulty outside the family's
    range, or a ``hint_level`` outside 0..3.
    """
    fam = _family(family)
    _check_difficulty(family, difficulty)
    if not 0 <= hint_level <= MAX_HINT_LEVEL:
        raise ValueError(f"hint_level must be in [0, {MAX_HINT_LEVEL}], got {hint_level!r}")
    if style == "natural":
        return NATURAL[family](seed, index, difficulty, hint_level, answer_format)
    if style != "compact":
        raise ValueError(f"unknown style {style!r}; valid styles: compact, natural")
    ex = fam.make(seed, index, difficulty, hint_level)
    return ex if answer_format == "auto" else replace(ex, answer_format=answer_format)


def generate(family: str, n: int, seed: int, difficulty: int | tuple[int, int],
             hint_level: int = 1, style: str = "compact", answer_format: str = "auto") -> list[Example]:
    """``n`` examples with indices ``0..n-1`` (``style``, ``answer_format``: as ``make_example``).

    A ``(lo, hi)`` difficulty is drawn per index from ``(family, seed, index)`` alone (natural:
    ``(family + "/natural", seed, index)``), so example ``i`` is the same whatever ``n`` is.
    """
    _family(family)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if isinstance(difficulty, tuple):
        lo, hi = difficulty
        _check_difficulty(family, lo)
        _check_difficulty(family, hi)
        if lo > hi:
            raise ValueError(f"difficulty range ({lo}, {hi}) has lo > hi")
        key = family if style == "compact" else f"{family}/{style}"
        draw = lambda i: random.Random(f"{key}:{seed}:{i}:difficulty").randint(lo, hi)  # noqa: E731
    else:
        draw = lambda i: difficulty  # noqa: E731
    return [make_example(family, seed, i, draw(i), hint_level, style, answer_format) for i in range(n)]


def _countdown_sources(example: Example) -> tuple[list[int], int] | None:
    """(source numbers, target): the prompt's compact header; else ``meta`` (``numbers`` and
    ``target``, as natural examples carry); else the header inside a templated prompt."""
    header = _COUNTDOWN_PROMPT_RE.fullmatch(example.prompt.strip())
    nums, target = example.meta.get("numbers"), example.meta.get("target")
    if header is None and isinstance(target, int) and not isinstance(target, bool):
        ok = isinstance(nums, list) and 0 < len(nums) <= _MAX_STEPS + 1 and all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 10**12 for x in nums)
        return (list(nums), target) if ok else None
    header = header or _COUNTDOWN_PROMPT_RE.search(example.prompt[:_MAX_COMPLETION_CHARS])
    if header is None:
        return None
    return [int(t) for t in header.group(1).split(" ")], int(header.group(2))


def verify_countdown(completion: str, example: Example) -> bool:
    """Whether ``completion`` reaches the target of a countdown ``example``.

    Sources and target are parsed from ``example.prompt`` (``"n1 n2 ...:target="``), so exported
    rows verify too; a prompt that is not that header takes them from ``example.meta`` when it
    holds ``numbers`` and ``target`` (natural-style examples), else from the header inside the
    prompt (a compact prompt under a prompt_template). The target must also agree with
    ``example.answer``. The completion is a
    comma-separated list of steps ``"x op y=z"`` (whitespace allowed, op in ``+-*``, all
    non-negative integers of at most 12 digits for operands). Each ``x`` and ``y`` is taken from a
    multiset pool (initially the sources; each step consumes ``x`` and ``y`` and adds ``z``);
    each ``z`` must equal ``x op y``; the last ``z`` must equal the target. Not every number need
    be used. Anything malformed, over 2,000 characters or over 20 steps is ``False``. Linear time;
    no ``eval``.
    """
    if not isinstance(completion, str) or len(completion) > _MAX_COMPLETION_CHARS:
        return False
    sources = _countdown_sources(example)
    if sources is None:
        return False
    numbers, target = sources
    if example.answer.strip() != str(target):
        return False
    raw_steps = completion.strip().split(",")
    if len(raw_steps) > _MAX_STEPS:
        return False
    pool = Counter(numbers)
    z = None
    for raw in raw_steps:
        step = _STEP_RE.fullmatch(raw)
        if step is None:
            return False
        x, op, y, z = int(step.group(1)), step.group(2), int(step.group(3)), int(step.group(4))
        pool[x] -= 1
        pool[y] -= 1
        if pool[x] < 0 or pool[y] < 0 or apply_op(x, op, y) != z:
            return False
        pool[z] += 1
    return z == target
