"""Tasks: where examples come from and how a completion is checked.

``load_sources(sources)`` turns the config's list of data sources (synthetic families, JSONL /
parquet files, CHAMP) into one list of ``Example``; ``verify(completion, example)`` checks a
completion with the verifier the example names (``VERIFIERS``), reading the answer with the
example's ``answer_format`` (``formats.ANSWER_FORMATS``). Files and CHAMP go through the same
``files.rows_to_examples`` path.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import files, formats, synthetic, verifiers
from .base import Example

VERIFIERS = {
    "exact": verifiers.verify_exact,
    "numeric": verifiers.verify_numeric,
    "math": verifiers.verify_math,
    "countdown": synthetic.verify_countdown,
}


def verify(completion: str, example: Example, finished: bool = True) -> bool:
    """True iff ``completion`` answers ``example`` correctly (never raises on model text).

    ``finished=False`` (the completion was cut at the length limit, no stop token): credited only
    when it carries an explicit, complete final answer (``formats.has_final_answer``), never by
    its last number or "= ..." tail, which the cut may have split."""
    try:
        if not finished and not formats.has_final_answer(completion, example.answer_format,
                                                         example.answer_regex):
            return False
        return bool(VERIFIERS[example.verifier](completion, example))
    except Exception:  # a verifier bug must not kill a training run: count it as wrong
        return False


def _with_format(exs: list[Example], src) -> list[Example]:
    """The source's answer_format / answer_regex on examples still at "auto" (a row's own format
    wins, as its own verifier does), then its prompt_template on every prompt, with
    ``{instruction}`` = INSTRUCTIONS[the example's format]. Ids are never recomputed."""
    fmt = getattr(src, "answer_format", "auto")
    rx = getattr(src, "answer_regex", None)
    template = getattr(src, "prompt_template", "{prompt}")
    out = []
    for e in exs:
        if fmt != "auto" and e.answer_format == "auto":
            e = replace(e, answer_format=fmt)
        if e.answer_format == "regex" and e.answer_regex is None:
            if not rx:
                raise ValueError(f"data source {src.source!r}: problem {e.id!r} has answer_format "
                                 f"'regex' but no answer_regex; set answer_regex on the source")
            e = replace(e, answer_regex=rx)
        if template != "{prompt}":
            e = replace(e, prompt=formats.apply_template(e.prompt, template, e.answer_format))
        out.append(e)
    return out


def load_source(src) -> tuple[list[Example], int]:
    """One ``DataSource`` (config section) -> (examples, rows skipped); its answer_format,
    answer_regex and prompt_template applied (``_with_format``) after ids are fixed."""
    style = getattr(src, "style", "compact")
    if src.source in synthetic.FAMILIES:
        if src.n < 1:
            raise ValueError(f"data source {src.source!r}: set n >= 1 (number of examples to generate)")
        lo, hi = (src.difficulty * 2)[:2] if len(src.difficulty) == 1 else src.difficulty
        exs = synthetic.generate(src.source, src.n, src.seed, (lo, hi), src.hint_level, style,
                                 getattr(src, "answer_format", "auto"))
        if src.verifier != "auto":
            exs = [replace(e, verifier=src.verifier) for e in exs]
        return _with_format(exs, src), 0
    if style != "compact":
        raise ValueError(f"data source {src.source!r}: style {style!r} applies to synthetic families "
                         f"only ({', '.join(synthetic.FAMILIES)})")
    fields = files.Fields(**{
        name: (value,) for name, value in (
            ("prompt", src.prompt_field), ("answer", src.answer_field), ("hint", src.hint_field),
            ("solution", src.solution_field), ("id", src.id_field)) if value
    })
    verifier = "math" if src.verifier == "auto" else src.verifier
    if src.source == "champ":
        # CHAMP's rows have fixed names (problem/answer/hint/solution): field options do not apply
        exs, skipped = files.load_champ(files.Fields(), verifier, src.on_error)
    elif Path(src.source).suffix in (".jsonl", ".json", ".parquet"):
        exs, skipped = files.load_file(src.source, fields, verifier, src.on_error)
    else:
        raise ValueError(f"data source {src.source!r} is neither a synthetic family "
                         f"({', '.join(synthetic.FAMILIES)}), 'champ', nor a .jsonl/.parquet file")
    return _with_format(exs[: src.n] if src.n else exs, src), skipped


def load_sources(sources, what: str = "data") -> list[Example]:
    """All sources concatenated; ids must be unique across sources."""
    out: list[Example] = []
    seen: dict[str, str] = {}
    for i, src in enumerate(sources):
        exs, skipped = load_source(src)
        if skipped:
            from ..runlog import console
            console.print(f"[yellow]{what}[{i}] {src.source}: skipped {skipped} bad rows[/]")
        for e in exs:
            if e.id in seen:
                raise ValueError(f"{what}[{i}] {src.source}: duplicate problem id {e.id!r} "
                                 f"(also in {seen[e.id]}); give sources different seeds")
            seen[e.id] = src.source
        out += exs
    return out


__all__ = ["Example", "VERIFIERS", "verify", "load_source", "load_sources"]
