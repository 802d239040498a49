"""The verifiers a problem names (``Example.verifier``): ``exact``, ``numeric`` and ``math``
(countdown's lives with its family in ``synthetic``). Each reads the answer with the problem's
answer format (``formats``), then compares it with the gold, cheapest first (``answers``):
normalised strings, plain numbers, then math-verify. Precedence and the prose-gold rules:
docs/answer-checking.md.
"""
from __future__ import annotations

import re

from paced.tasks.answers import TEXT_WRAP, math_equal, normalize, numeric_equal, parse_number
from paced.tasks.base import Example
from paced.tasks.formats import extract, extract_answer

__all__ = ["verify_exact", "verify_numeric", "verify_math", "gold_forms", "polarity", "has_free_variable",
           "is_prose"]


def _extract(completion: str, example: Example) -> str | None:
    """The answer read with the example's ``answer_format``; ``auto`` is ``extract_answer``."""
    fmt = getattr(example, "answer_format", "auto")
    if fmt == "auto":
        return extract_answer(completion)
    return extract(completion, fmt, getattr(example, "answer_regex", None))


def verify_exact(completion: str, example: Example) -> bool:
    """Text after the last ``=`` (or the whole completion), stripped, equals the answer; with an
    ``answer_format`` other than auto, the answer that format reads, stripped, equals it."""
    if not isinstance(completion, str):
        return False
    if getattr(example, "answer_format", "auto") != "auto":
        return (_extract(completion, example) or "") == str(example.answer).strip() != ""
    return completion[completion.rfind("=") + 1:].strip() == str(example.answer).strip()


_EQUIV = re.compile(r",?\s+or\s+(?:equivalently|an\s+equivalent\s+form\s+such\s+as)\s+", re.I)
_POLAR = re.compile(r"^\W*(yes|no)\b", re.I)
_LEAD_NUM = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+(?:is\b|\(|pairs?\b|solutions?\b|values?\b|roots?\b|ways?\b)")
_WORDS = re.compile(r"\\[A-Za-z]+|\b(?:sqrt|floor|ceil|sum|prod|binom|log|ln|exp|sin|cos|tan|pi|C|P)\b")


def gold_forms(gold: str) -> list[str]:
    """The answers a gold accepts, for golds written as prose: "X, or equivalently Y" -> [X, Y];
    "0 is the only possible value" / "0 (i.e., none)" / "0 pairs" -> ["0"]; else [gold]."""
    forms = [f.strip() for f in _EQUIV.split(gold) if f.strip()]
    out = []
    for f in forms:
        m = _LEAD_NUM.match(f)
        out.append(m.group(1) if m else f)
    return out or [gold]


def polarity(s: str) -> str | None:
    """"yes" / "no" when ``s`` starts with that word ("No integer solutions" is a no)."""
    m = _POLAR.match(TEXT_WRAP.sub(r"\1", s)) if isinstance(s, str) else None
    return m.group(1).lower() if m else None


def has_free_variable(s: str) -> bool:
    """A single-letter name outside commands and ``\text{}`` (n in ``2^floor(n/2)``)."""
    bare = _WORDS.sub(" ", TEXT_WRAP.sub(" ", s))
    return re.search(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", bare) is not None


_MATH_WORDS = frozenset("sqrt sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp lg "
                        "floor ceil sum prod binom choose max min gcd lcm mod pmod infty inf det".split())


def is_prose(s: str) -> bool:
    """A word of three or more letters that is not a math name (LaTeX commands, ``\text{}``
    wrappers and names like ``sqrt`` aside): "60, not 68.", "3<junk>", "5 apples"."""
    bare = re.sub(r"\\[A-Za-z]+", " ", TEXT_WRAP.sub(r" \1 ", s))
    return any(w.lower() not in _MATH_WORDS for w in re.findall(r"[A-Za-z]{3,}", bare))


def _verify(completion: str, example: Example, symbolic: bool) -> bool:
    """Precedence: the extracted answer against each of ``gold_forms``; a yes/no gold by the
    answer's (or else the completion's first word's) polarity; a plain number never equals a gold
    with a free variable (math-verify would read ``sum_(i=1)^n i^3`` as a number and accept 1)."""
    pred = _extract(completion, example) if isinstance(completion, str) else None
    gold = str(example.answer).strip()
    if not gold:
        return False
    want = polarity(gold) if symbolic else None
    if want is not None:
        got = polarity(pred or "") or polarity(completion if isinstance(completion, str) else "")
        return got == want
    if pred is None:
        return False
    return any(_equal(pred, g, symbolic) for g in gold_forms(gold))


def _equal(pred: str, gold: str, symbolic: bool) -> bool:
    if normalize(pred) == normalize(gold):
        return True
    num = numeric_equal(pred, gold)
    if num is not None or not symbolic:
        return bool(num)
    if parse_number(pred) is not None and has_free_variable(gold):
        return False
    if is_prose(pred):   # math-verify reads a number out of prose ("60, not 68." as 68): never
        return False
    return math_equal(pred, gold)


def verify_numeric(completion: str, example: Example) -> bool:
    """The example's answer format's extractor (auto: extract_answer), then normalized string
    equality or numeric_equal."""
    return _verify(completion, example, symbolic=False)


def verify_math(completion: str, example: Example) -> bool:
    """The format's extractor (auto: extract_answer); normalized equality; numeric_equal if both
    are numbers; else math_equal."""
    return _verify(completion, example, symbolic=True)
