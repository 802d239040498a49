"""Answer formats: where the final answer is read from a completion, one extractor per format.

``ANSWER_FORMATS[name](text, pattern) -> str | None`` (``pattern`` is used by ``regex`` alone);
``INSTRUCTIONS[name]`` is the sentence a prompt_template's ``{instruction}`` adds. Every extractor
is a small pure total function: never raises, never ``eval``s, and is linear and fast on hostile
text (1 MB strings, 100,000 nested braces), as ``paced.tasks.answers`` promises.

``auto``
    ``extract_answer``: the last box, else the line after the last ``####``, else what
    follows the last "answer is" (when it is an answer, not prose), else the rest of the line after
    the last ``=``, else the last number. Made for the compact families' ``"...=answer"``.
``boxed``
    The last top-level ``\\boxed{...}`` / ``\\fbox{...}`` (``answers.extract_boxed``); nothing else.
``last_number``
    The last number in the last 4,096 characters (``-12``, ``1,234``, ``0.5``, ``3/4``; a ``-`` counts
    as a sign only when no letter, digit or ``)`` stands right before it, so ``57-35`` ends in 35).
``gsm8k``
    After the last ``####``: the leading number if the rest starts with one (``"#### $1,080 in
    all"`` -> ``1,080``), else the rest of that line (the next non-empty line if ``####`` ends a line).
``answer_is``
    After the last ``answer is`` / ``answer:`` (any case, an optional ``:``), read like ``gsm8k``;
    a ``\\boxed{}`` there gives its content. ``**``/``$`` wrappers are dropped.
``regex``
    The last match of the user's pattern in the last 4,096 characters: its group 1 when the
    pattern has a group, else the whole match. The pattern is compiled once (cached); a bad one
    is a config error (DataSource.check in paced/config/sections.py) and None here.

All results are stripped; an empty result is None. Deviations: ``last_number`` and ``regex`` see
only the last 4,096 characters (a bound on the work a hostile completion can cause; a number
longer than that window is None), and a pathological user pattern (nested quantifiers) can still
backtrack within that window: Python's ``re`` has no timeout.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from paced.tasks.answers import extract_boxed

__all__ = ["extract_answer", "ANSWER_FORMATS", "INSTRUCTIONS", "TAIL", "extract", "compile_regex", "apply_template",
           "has_final_answer"]

TAIL = 4096  # characters of the completion's end that last_number and regex search
_MAX_LINE = 2000  # characters after a marker that gsm8k / answer_is look at

_LAST_NUM = re.compile(r"(?:(?<![\w)])-)?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_LEAD_NUM = re.compile(r"\s*(?:\*\*|\$|\\\$)?\s*(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)(?![\d.]*[A-Za-z^_(\\{])")
_ANSWER_IS = re.compile(r"\banswer\b\s{0,8}(?:is\b\s{0,8}:?|:)", re.I)
_WRAP = " \t*$`"  # stripped around a marked answer: spaces, markdown bold, dollars, backticks


def _lead(rest: str) -> str | None:
    """What follows a marker: a box's content, else a leading number, else the line, unwrapped."""
    rest = rest[:_MAX_LINE].lstrip()
    line = rest.split("\n", 1)[0].strip()
    box = extract_boxed(line)
    if box is not None and box.strip():
        return box.strip()
    m = _LEAD_NUM.match(line)
    if m:
        return m.group(1).rstrip(",")
    line = line.strip(_WRAP).rstrip(".").strip(_WRAP)
    return line or None


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_answer(text: str) -> str | None:
    """The model's explicit final-answer markers before stray numbers: the last non-empty box;
    else the line after the last ``####``; else what follows the last "answer is" / "answer:" (a
    leading number, else the line: "The answer is 3, not 4" reads 3); else the rest of the line
    after the last ``=``; else the last number. Stripped; None when nothing non-empty is found."""
    if not isinstance(text, str) or not text:
        return None
    box = extract_boxed(text)
    if box is not None and box.strip():
        return box.strip()
    i = text.rfind("####")
    if i >= 0 and text[i + 4:].strip():
        return text[i + 4:].strip().split("\n", 1)[0].strip()   # its line: what follows is not the answer
    said = _answer_is(text)
    if said:
        return said
    i = text.rfind("=")
    rest = text[i + 1:].split("\n", 1)[0].strip() if i >= 0 else ""
    if rest:   # "= 60, not 68." reads 60; "= 2 \cdot 3" stays whole
        lead = _LEAD_ANSWER.match(rest)
        return lead.group(1).rstrip(",") if lead else rest
    tail = text[-4096:]   # the last number is almost always in the tail: avoid scanning 1 MB
    nums = [m for m in _NUM.finditer(tail)]
    if not nums or (nums[-1].start() == 0 and len(tail) < len(text)):
        nums = [m for m in _NUM.finditer(text)][-1:]
    return nums[-1].group().rstrip(",") if nums else None


# a number that ends the answer: then the end, punctuation, or a word of prose (not an operator,
# a LaTeX command or a variable)
_LEAD_ANSWER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)(?=$|[,;!)]|\.(?:\s|$)|\s+[A-Za-z]{2,}\b)")
_FILLER = re.compile(r"^(?:simply|just|exactly|indeed|then|now)\s+", re.I)


def _answer_is(text: str) -> str | None:
    """What follows the last "answer is" / "answer:", when it is an answer and not prose: it
    starts with a number or ``\\frac``, or is one short token ("Your answer is correct, but ..."
    and "the answer is written after ..." are not answers)."""
    said = extract_answer_is(text)
    if not said:
        return None
    said = _FILLER.sub("", said.strip().strip("\"'*`$ ").strip())
    if re.match(r"[+-]?\.?\d|\\frac", said):
        m = _NUM.match(said.lstrip("+"))
        return m.group().rstrip(",") if m and not re.match(r"[\d,.]*\s*[-+*/^]", said[m.end():] or " ") \
            and said[m.end():m.end() + 1] in ("", " ", ",", ".", ";", ")", "!") else said
    return said if len(said) <= 20 and " " not in said else None


def extract_auto(text: str, pattern: str | None = None) -> str | None:
    """``extract_answer``."""
    return extract_answer(text)


def extract_boxed_only(text: str, pattern: str | None = None) -> str | None:
    """The last top-level box's content, stripped; None without a non-empty box."""
    box = extract_boxed(text) if isinstance(text, str) else None
    return box.strip() or None if box is not None else None


def extract_last_number(text: str, pattern: str | None = None) -> str | None:
    """The last number in the last ``TAIL`` characters (trailing ``,`` dropped)."""
    if not isinstance(text, str) or not text:
        return None
    tail = text[-TAIL:]
    last = None
    for last in _LAST_NUM.finditer(tail):
        pass
    if last is None:
        return None
    if last.start() == 0 and len(text) > len(tail) and text[-len(tail) - 1] in "0123456789,.":
        return None  # the number runs past the window: not an answer anyone wrote
    return last.group().rstrip(",")


def extract_gsm8k(text: str, pattern: str | None = None) -> str | None:
    """After the last ``####``: a leading number, else the rest of the line."""
    i = text.rfind("####") if isinstance(text, str) else -1
    return _lead(text[i + 4:]) if i >= 0 else None


def extract_answer_is(text: str, pattern: str | None = None) -> str | None:
    """After the last ``answer is`` / ``answer:``: a box, a leading number, else the line."""
    if not isinstance(text, str):
        return None
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    return _lead(text[last.end():]) if last is not None else None


@lru_cache(maxsize=256)
def compile_regex(pattern: str) -> re.Pattern:
    """``re.compile(pattern)``, cached; raises ``re.error`` on a bad pattern."""
    return re.compile(pattern)


def extract_regex(text: str, pattern: str | None = None) -> str | None:
    """Group 1 (or the whole match) of the last match of ``pattern`` in the last ``TAIL`` chars."""
    if not isinstance(text, str) or not isinstance(pattern, str) or not pattern:
        return None
    try:
        rx = compile_regex(pattern)
        last = None
        for last in rx.finditer(text[-TAIL:]):
            pass
        got = None if last is None else last.group(1) if rx.groups else last.group(0)
    except (re.error, OverflowError, RecursionError, IndexError):
        return None
    return got.strip() or None if got is not None else None


# name -> extractor(text, pattern) -> answer | None
ANSWER_FORMATS: dict[str, Callable[[str, str | None], str | None]] = {
    "auto": extract_auto,
    "boxed": extract_boxed_only,
    "last_number": extract_last_number,
    "gsm8k": extract_gsm8k,
    "answer_is": extract_answer_is,
    "regex": extract_regex,
}

# name -> the prompt_template's {instruction} ("" where there is none to give)
INSTRUCTIONS: dict[str, str] = {
    "auto": "",
    "boxed": "Put your final answer within \\boxed{}.",
    "last_number": "Answer with just the number.",
    "gsm8k": "Write your final answer after '####'.",
    "answer_is": 'End with "The answer is: <answer>".',
    "regex": "",
}


def extract(text: str, answer_format: str = "auto", pattern: str | None = None) -> str | None:
    """The answer ``answer_format`` reads from ``text``; None for none (or an unknown format)."""
    fn = ANSWER_FORMATS.get(answer_format)
    try:
        return fn(text, pattern) if fn is not None else None
    except Exception:  # defensive: the extractors are total
        return None


def _closed_marker(text: str, marker: re.Pattern) -> bool:
    """The last ``marker`` is followed by a non-empty answer line that a newline ends."""
    last = None
    for last in marker.finditer(text):
        pass
    if last is None:
        return False
    line, nl, _ = text[last.end():last.end() + _MAX_LINE].lstrip(" \t").partition("\n")
    return bool(nl and line.strip(_WRAP))


_HASHES = re.compile(r"####")


def has_final_answer(text: str, answer_format: str = "auto", pattern: str | None = None) -> bool:
    """Whether ``text`` carries an explicit, complete final answer: a closed non-empty
    ``\\boxed{}``, or a ``####`` / "answer is" line that a newline ends; with ``regex``, also a
    match of the pattern that ends before the text does. A completion cut at the length limit is
    credited only when this holds (its last number or "= ..." tail may be cut mid-answer).
    Deviation: ``last_number`` has no explicit marker, so a cut completion in that format needs
    one of the above."""
    if not isinstance(text, str) or not text:
        return False
    box = extract_boxed(text)
    if box is not None and box.strip():
        return True
    if _closed_marker(text, _HASHES) or _closed_marker(text, _ANSWER_IS):
        return True
    if answer_format == "regex" and isinstance(pattern, str) and pattern:
        try:
            last = None
            for last in compile_regex(pattern).finditer(text[-TAIL:]):
                pass
            return last is not None and last.end() < len(text[-TAIL:])
        except (re.error, OverflowError, RecursionError):
            return False
    return False


def apply_template(prompt: str, template: str, answer_format: str = "auto") -> str:
    """``template`` filled with ``{prompt}`` and ``{instruction}`` (INSTRUCTIONS[answer_format]),
    stripped; the default ``"{prompt}"`` returns ``prompt`` itself."""
    if template == "{prompt}":
        return prompt
    return template.format(prompt=prompt, instruction=INSTRUCTIONS.get(answer_format, "")).strip()
