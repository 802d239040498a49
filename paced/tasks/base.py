"""The task abstraction every procedure stands on.

An ``Example`` is one verifiable problem: a stable ``id``, the ``prompt`` the policy sees, the
reference ``answer``, and optionally a ``hint`` (free text, used by Guide) and a worked
``solution`` (used by SFT and as the teacher's response format). ``answer_format`` (and
``answer_regex``) say where the final answer is read from a completion (``paced.tasks.formats``).

Synthetic families, data files and CHAMP all produce ``Example`` objects; which verifier checks a
completion is carried by the example itself (``example.verifier``, a key of ``VERIFIERS`` in
``paced.tasks``), so that a mixed pool of families and files is checked correctly row by row.
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict


@dataclass(frozen=True)
class Example:
    id: str                      # stable across runs: the ledger's key
    prompt: str                  # the user turn, before any chat template
    answer: str                  # the reference final answer
    hint: str | None = None      # free-text hint (Guide); never shown unless a trainer asks
    solution: str | None = None  # the full reference response (SFT target, teacher format)
    verifier: str = "math"       # key of paced.tasks.VERIFIERS
    source: str = ""             # family or file it came from (for per-source tables)
    difficulty: int | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    answer_format: str = "auto"  # key of paced.tasks.formats.ANSWER_FORMATS: how the answer is read
    answer_regex: str | None = None  # answer_format "regex": the pattern

    def to_row(self) -> dict:
        """A JSON-serialisable row that ``paced.tasks.files`` reads back unchanged (the default
        ``answer_format`` "auto" is left out, like empty fields)."""
        row = asdict(self)
        return {k: v for k, v in row.items()
                if v not in (None, {}, "") and not (k == "answer_format" and v == "auto")}
