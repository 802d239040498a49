"""Tests for paced.tasks.synthetic."""
from __future__ import annotations

import re
import time

import pytest

from paced.tasks.base import Example
from paced.tasks.synthetic import FAMILIES, generate, make_example, verify_countdown

ALLOWED_CHARS = {chr(c) for c in range(32, 127)} | {"\n"}


def exact(completion: str, example: Example) -> bool:
    """Local copy of the "exact" rule: text after the last '=' (or all of it), stripped."""
    return completion.rsplit("=", 1)[-1].strip() == example.answer


def verify(completion: str, example: Example) -> bool:
    return verify_countdown(completion, example) if example.verifier == "countdown" \
        else exact(completion, example)


def difficulties(family: str) -> range:
    lo, hi = FAMILIES[family].difficulty_range
    return range(lo, hi + 1)


def all_examples(n: int = 8, hint_level: int = 1):
    for family in FAMILIES:
        for d in difficulties(family):
            yield from generate(family, n, seed=3, difficulty=d, hint_level=hint_level)


def unrev(s: str) -> int:
    return int(s[::-1])


# --- API, determinism, validation -----------------------------------------------------------

def test_families_and_ranges():
    assert set(FAMILIES) == {"add", "sub", "mul1", "modular", "countdown"}
    assert FAMILIES["add"].difficulty_range == (1, 8)
    assert FAMILIES["modular"].difficulty_range == (1, 10)
    assert FAMILIES["countdown"].difficulty_range == (2, 6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_deterministic(family):
    lo, hi = FAMILIES[family].difficulty_range
    assert make_example(family, 7, 5, hi, 2) == make_example(family, 7, 5, hi, 2)
    assert generate(family, 20, 1, (lo, hi)) == generate(family, 20, 1, (lo, hi))
    assert generate(family, 20, 1, hi) != generate(family, 20, 2, hi)
    assert make_example(family, 1, 0, hi).id == f"{family}/d{hi}/s1/0"


def test_difficulty_range_draws_per_index():
    exs = generate("add", 200, 0, (2, 8))
    ds = {e.difficulty for e in exs}
    assert ds <= set(range(2, 9)) and len(ds) > 4
    # example i does not depend on n
    assert generate("add", 5, 0, (2, 8)) == exs[:5]
    for e in exs[:20]:
        assert e == make_example("add", 0, int(e.id.rsplit("/", 1)[1]), e.difficulty)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ids_unique_and_fields(family):
    lo, hi = FAMILIES[family].difficulty_range
    exs = generate(family, 50, 0, (lo, hi))
    assert len({e.id for e in exs}) == 50
    for e in exs:
        assert e.source == family
        assert e.verifier == ("countdown" if family == "countdown" else "exact")
        assert lo <= e.difficulty <= hi


def test_validation_errors():
    with pytest.raises(ValueError, match="add"):
        make_example("nope", 0, 0, 1)
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        make_example("add", 0, 0, 9)
    with pytest.raises(ValueError, match=r"\[2, 6\]"):
        make_example("countdown", 0, 0, 1)
    with pytest.raises(ValueError):
        generate("modular", 3, 0, (0, 5))
    with pytest.raises(ValueError):
        generate("modular", 3, 0, (5, 2))
    with pytest.raises(ValueError):
        make_example("add", 0, 0, 3, hint_level=4)


# --- correctness ------------------------------------------------------------------------------

def test_solutions_verify_and_corruptions_rejected():
    for e in all_examples():
        assert verify(e.solution, e), e
        assert verify(e.solution + "\n", e), e
        if e.verifier == "exact":
            assert not verify(e.solution + "1", e)
        else:
            last = e.solution.rsplit("=", 1)
            assert not verify(f"{last[0]}={int(last[1]) + 1}", e)


def test_digit_answers_are_arithmetically_right():
    for family, op in (("add", "+"), ("sub", "-"), ("mul1", "*")):
        for d in difficulties(family):
            for e in generate(family, 10, 11, d):
                a_s, b_s = e.prompt[:-1].split(op)
                assert len(a_s) == 8 and len(b_s) == (1 if op == "*" else 8)  # fixed width
                a, b = unrev(a_s), unrev(b_s)
                assert len(str(a)) == d  # exactly d significant digits
                want = {"+": a + b, "-": a - b, "*": a * b}[op]
                assert want >= 0
                assert len(e.answer) == (8 if op == "-" else 9)
                assert unrev(e.answer) == want


def test_modular_answers_are_arithmetically_right():
    pat = re.compile(r"(\d+)((?:[+*-]\d)+)%(\d+)=")
    for d in difficulties("modular"):
        for e in generate("modular", 10, 5, d):
            x0, ops, m = pat.fullmatch(e.prompt).groups()
            x, m, vals = int(x0), int(m), []
            assert len(ops) == 2 * d and 0 <= x < m
            for op, k in zip(ops[::2], ops[1::2]):
                x = {"+": x + int(k), "-": x - int(k), "*": x * int(k)}[op] % m
                vals.append(str(x))
            assert e.answer == vals[-1]
            assert e.solution == ",".join(vals) + "=" + vals[-1]


def test_countdown_uses_all_numbers():
    for d in difficulties("countdown"):
        for e in generate("countdown", 20, 2, d):
            steps = e.solution.split(",")
            assert len(steps) == d - 1
            assert steps[-1].endswith("=" + e.answer)
            assert e.prompt.endswith(f":{e.answer}=")


# --- hints and alphabet ----------------------------------------------------------------------

def test_hints_monotone():
    for family in FAMILIES:
        for d in difficulties(family):
            for i in range(5):
                hints = [make_example(family, 0, i, d, lvl).hint for lvl in range(4)]
                assert hints[0] is None
                for weaker, stronger in zip(hints[1:], hints[2:]):
                    assert stronger.startswith(weaker)
                assert all(h.startswith("starts ") for h in hints[1:])
    # strictly stronger where there is room
    e1, e3 = make_example("add", 0, 0, 8, 1), make_example("add", 0, 0, 8, 3)
    assert len(e3.hint) > len(e1.hint)
    assert make_example("modular", 0, 0, 10, 3).hint.count(",") == 2
    # hints never give the whole answer away at high difficulty
    for family in ("modular", "countdown"):
        hi = FAMILIES[family].difficulty_range[1]
        e = make_example(family, 0, 0, hi, 3)
        assert not verify(e.hint.removeprefix("starts "), e)


def test_only_printable_ascii():
    for lvl in (0, 3):
        for e in all_examples(n=4, hint_level=lvl):
            text = e.prompt + e.answer + e.solution + (e.hint or "") + e.id
            assert set(text) <= ALLOWED_CHARS, e


# --- verify_countdown ---------------------------------------------------------------------------

CD = Example(id="t", prompt="3 25 7 7:82=", answer="82", verifier="countdown", source="countdown")


def test_verify_countdown_accepts():
    assert verify_countdown("25*3=75,75+7=82", CD)
    assert verify_countdown("  25 * 3 = 75 , 75 + 7 = 82\n", CD)
    assert verify_countdown("7+7=14,14-7=7,25*3=75,75+7=82", CD) is False  # only two 7s
    assert verify_countdown("7+75=82", Example(id="u", prompt="3 25 7:82=", answer="82")) is False
    assert verify_countdown("25*3=75,7+75=82", CD)  # a result goes back into the pool
    assert verify_countdown("7-7=0,25*3=75,75+0=75", Example(id="v", prompt="3 25 7 7:75=",
                                                              answer="75"))


@pytest.mark.parametrize("completion", [
    "25*3=76,76+6=82",          # wrong arithmetic
    "25*4=100,100-18=82",       # 4 and 18 not in pool
    "25*3=75,75+3=78",          # reuses 3
    "7+7=14,14+7=21",           # reuses 7 a third time
    "25*3=75,75+7=82,82-7=75",  # final value is not the target
    "25*3=75",                  # final value is not the target
    "3-7=-4",                   # negative intermediates are malformed
    "",
    "   \n",
    "25*3=75,75+7=82,",
    "25/3=8",
    "25*3=75;75+7=82",
    "x" * 5000,
    "25*3=75," * 600 + "75+7=82",
    ",".join(["3+7=10", "10-7=3"] * 11),  # 22 steps
    "1" * 100 + "*3=" + "3" * 100,
    "10^10^10^10",
    "10**10**10**10=1",
    "eval('82')",
])
def test_verify_countdown_rejects_fast(completion):
    start = time.perf_counter()
    assert verify_countdown(completion, CD) is False
    assert time.perf_counter() - start < 0.01


def test_verify_countdown_reads_prompt_not_meta():
    e = make_example("countdown", 0, 3, 5)
    row = Example(**{**e.to_row(), "meta": {}})
    assert verify_countdown(e.solution, row)
    bad = Example(**{**e.to_row(), "prompt": "garbage"})
    assert not verify_countdown(e.solution, bad)


# --- natural style (paced.tasks.natural) ------------------------------------------------------
NATURAL_FORMATS = {"auto": None, "boxed": None, "last_number": None, "gsm8k": None,
                   "answer_is": None, "regex": r"answer is\s*(-?\d+)"}


def natural_examples(n: int = 6, hint_level: int = 1, fmt: str = "auto"):
    for family in FAMILIES:
        for d in difficulties(family):
            yield from generate(family, n, seed=3, difficulty=d, hint_level=hint_level,
                                style="natural", answer_format=fmt)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_natural_deterministic_and_distinct(family):
    lo, hi = FAMILIES[family].difficulty_range
    a = generate(family, 20, 1, (lo, hi), 2, "natural")
    assert a == generate(family, 20, 1, (lo, hi), 2, "natural")
    assert a != generate(family, 20, 2, (lo, hi), 2, "natural")
    e = make_example(family, 1, 0, hi, style="natural")
    assert e.id == f"{family}/natural/d{hi}/s1/0" and e.source == f"{family}/natural"
    compact = {x.id for x in generate(family, 20, 1, (lo, hi))}
    assert not compact & {x.id for x in a}
    assert e.verifier == ("countdown" if family == "countdown" else "numeric")


def test_natural_plain_numbers():
    for e in generate("add", 50, 0, (1, 4), style="natural"):
        a, b = e.meta["a"], e.meta["b"]
        assert e.prompt == f"What is {a} + {b}?" and e.answer == str(a + b)
        assert e.solution.startswith(f"{a} + {b} = {a + b}.")
    e = make_example("sub", 0, 0, 3, style="natural")
    assert e.prompt == f"What is {e.meta['a']} - {e.meta['b']}?" and int(e.answer) >= 0
    e = make_example("mul1", 0, 0, 2, style="natural")
    assert re.fullmatch(r"What is [1-9]\d \* \d\?", e.prompt)
    assert "modulo 7" in make_example("modular", 0, 0, 3, style="natural").prompt


@pytest.mark.parametrize("fmt", list(NATURAL_FORMATS))
def test_natural_solutions_verify_in_every_format(fmt):
    from dataclasses import replace

    from paced.tasks import verify as task_verify
    from paced.tasks.answers import normalize
    from paced.tasks.formats import extract
    for e in natural_examples(fmt=fmt):
        e = replace(e, answer_regex=NATURAL_FORMATS[fmt])
        assert set(e.solution) <= ALLOWED_CHARS and set(e.prompt) <= ALLOWED_CHARS
        assert task_verify(e.solution, e), (fmt, e.id, e.solution)
        if e.verifier != "countdown":
            assert normalize(extract(e.solution, fmt, NATURAL_FORMATS[fmt])) == e.answer
            assert not task_verify(e.solution.replace(e.answer, e.answer + "1"), e)
    assert make_example("add", 0, 0, 2, style="natural", answer_format="boxed").solution.endswith(
        "\\boxed{" + make_example("add", 0, 0, 2, style="natural").answer + "}.")


def test_natural_hints_graded_prefixes_never_the_answer():
    for low, mid, high in zip(natural_examples(hint_level=1), natural_examples(hint_level=2),
                              natural_examples(hint_level=3)):
        assert high.hint.startswith(mid.hint) and mid.hint.startswith(low.hint)
        if low.source in ("add/natural", "sub/natural", "mul1/natural"):
            assert low.hint.startswith(f"The answer has {len(low.answer)} digit")
            assert not high.hint.endswith(f"starts {high.answer}")
        else:
            assert low.hint.startswith("Begin with ")
    assert all(e.hint is None for e in natural_examples(hint_level=0))


def test_natural_countdown_reads_meta():
    e = make_example("countdown", 0, 2, 4, style="natural")
    assert e.meta["target"] == int(e.answer) and len(e.meta["numbers"]) == 4
    assert verify_countdown(e.solution, e)
    assert not verify_countdown(e.solution, Example(**{**e.to_row(), "meta": {}}))
    compact = make_example("countdown", 0, 2, 4)   # a templated compact prompt: header found inside
    templated = Example(**{**compact.to_row(), "prompt": compact.prompt + " Write the steps."})
    assert verify_countdown(compact.solution, templated)


def test_natural_style_validation():
    with pytest.raises(ValueError, match="unknown style 'fancy'"):
        make_example("add", 0, 0, 1, style="fancy")
