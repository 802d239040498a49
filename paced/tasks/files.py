"""Users' data files (JSON Lines, Parquet) and CHAMP as ``Example`` lists.

One code path: each format only yields ``(line_or_row_number, row_dict)`` pairs (``iter_jsonl``,
``iter_parquet``, ``iter_champ``) and ``rows_to_examples`` alone turns rows into ``Example``s, so a
field alias, a type check or a duplicate-id check behaves the same for every format. Every
``DataError`` names the file, the line (JSON Lines) or row (Parquet, CHAMP), and the field.

With ``on_error="skip"`` bad rows, including unparsable JSON lines, are skipped and counted (and
the first few reasons logged); nothing is ever dropped silently.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .base import Example
from .formats import ANSWER_FORMATS, compile_regex

__all__ = ["DataError", "Fields", "VERIFIER_NAMES", "iter_jsonl", "iter_parquet", "iter_champ",
           "rows_to_examples", "load_file", "load_champ", "write_jsonl"]

log = logging.getLogger(__name__)
VERIFIER_NAMES = ("exact", "numeric", "math", "countdown")


class DataError(ValueError):
    """A bad data file or row; the message names the file, the line/row and the field."""


MAX_LINE_BYTES = 16 * 2 ** 20     # one JSON line; longer lines are refused unread (PACED_MAX_LINE_BYTES)
MAX_TEXT_CHARS = 1_000_000        # one prompt / answer / hint / solution (PACED_MAX_TEXT_CHARS)


def _limit(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise DataError(f"{name}={os.environ[name]!r} is not an integer") from None


def _readable(path: Path) -> None:
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied (the file is not readable by this user)")


def _lines(f, limit: int):
    """``(line_number, bytes)`` per line; a line over ``limit`` bytes comes as ``None`` (its rest
    skipped in bounded reads, never held in memory)."""
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while (chunk := f.readline(2 ** 20)) and not chunk.endswith(b"\n"):
                pass
            yield lineno, None
            continue
        yield lineno, raw


@dataclass
class Fields:
    """Field names tried in order for each Example attribute; the first present (non-null) wins."""
    prompt: tuple[str, ...] = ("prompt", "question", "problem")
    answer: tuple[str, ...] = ("answer", "final_answer", "solution_answer")
    hint: tuple[str, ...] = ("hint", "hints")
    solution: tuple[str, ...] = ("solution", "response", "completion")
    id: tuple[str, ...] = ("id", "problem_id", "idx")

    def __post_init__(self):  # Fields(prompt="q") means ("q",), not ("q",) split into letters
        for name in ("prompt", "answer", "hint", "solution", "id"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, str) else tuple(value))


# ----------------------------------------------------------------------------- row sources
def iter_jsonl(path, *, errors: str = "raise") -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for each non-blank line (1-based). A bad line (invalid UTF-8 or
    JSON, or not an object) raises ``DataError``; with ``errors="yield"`` it is yielded as
    ``(line_number, DataError)`` instead, so that a caller in skip mode can count it and go on."""
    path = Path(path)
    hint = " (.json files are read as JSON Lines: one object per line)" \
        if path.suffix.lower() == ".json" else ""
    limit = _limit("PACED_MAX_LINE_BYTES", MAX_LINE_BYTES)
    _readable(path)
    with open(path, "rb") as f:
        for lineno, raw in _lines(f, limit):
            err = None
            try:
                if raw is None:
                    raise DataError(f"longer than {limit:,} bytes (PACED_MAX_LINE_BYTES raises the limit)")
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                if not text.strip():
                    continue
                row = json.loads(text)
                if not isinstance(row, dict):
                    err = f"expected a JSON object, got {type(row).__name__}{hint}"
            except UnicodeDecodeError as e:
                err = f"invalid UTF-8 ({e.reason} at byte {e.start} of the line)"
            except (json.JSONDecodeError, RecursionError) as e:
                err = f"invalid JSON: {getattr(e, 'msg', e)} (column {getattr(e, 'colno', '?')})"
            except ValueError as e:     # DataError above; an integer beyond Python's digit limit
                err = " ".join(str(e).split())
            if err is None:
                yield lineno, row
                continue
            exc = DataError(f"{path}:{lineno}: {err}")
            if errors != "yield":
                raise exc
            yield lineno, exc


def iter_parquet(path) -> Iterator[tuple[int, dict]]:
    """``(row_number, row)`` for each row of a Parquet file (1-based), read in record batches."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install paced[parquet]") from e
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (OSError, ValueError) as e:  # pyarrow errors derive from these
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}[row {n + 1}]: unreadable Parquet data ({e})") from e


def _champ_file() -> Path:
    spec = importlib.util.find_spec("champ_dataset")  # locate without importing (no natsort needed)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("CHAMP needs the champ-dataset package: pip install paced[math]")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "dataset_files" / "v0.json"
        if p.is_file():
            return p
    raise ImportError("champ-dataset is installed but dataset_files/v0.json is missing; "
                      "reinstall it: pip install --force-reinstall paced[math]")


def iter_champ() -> Iterator[tuple[int, dict]]:
    """CHAMP problems as rows: id, problem, answer, hint (the problem's hints, in order, joined
    by newlines; absent when it has none), solution (its steps joined by newlines), meta."""
    path = _champ_file()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    text = lambda d: d.get("_text") or (d.get("_raw_text") or "").replace("@@", "")  # noqa: E731
    hints = data.get("hints", {})
    for n, (pid, p) in enumerate(data.get("problems", {}).items(), 1):
        row = {"id": p.get("identifier", pid), "problem": text(p),
               "answer": p.get("_answer") or (p.get("_raw_answer") or "").replace("@@", ""),
               "meta": {"category": p.get("category")}}
        seen, hs = set(), []
        for h in p.get("ch_list", []):
            if h.startswith("H_") and h in hints and h not in seen:
                seen.add(h)
                hs.append(text(hints[h]))
        if hs:
            row["hint"] = "\n".join(hs)
        steps = (p.get("solution") or {}).get("steps") or []
        if steps:
            row["solution"] = "\n".join(text(s) for s in steps)
        yield n, row


# ----------------------------------------------------------------------------- rows -> examples
def _pick(row: dict, names: tuple[str, ...]):
    for name in names:
        if row.get(name) is not None:
            return name, row[name]
    return None, None


def _text_ok(value, name: str, what: str, loc: str) -> None:
    """Valid Unicode (no unpaired surrogate, which JSON's \\ud800 escapes can carry) and bounded."""
    limit = _limit("PACED_MAX_TEXT_CHARS", MAX_TEXT_CHARS)
    if len(value) > limit:
        raise DataError(f"{loc}: field {name!r} ({what}) has {len(value):,} characters, more than "
                        f"{limit:,} (PACED_MAX_TEXT_CHARS raises the limit)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{loc}: field {name!r} ({what}) holds an unpaired surrogate "
                        f"{value[e.start]!r} at character {e.start}: not valid Unicode text") from None


def _row_to_example(row, fields: Fields, verifier: str, stem: str, source: str, loc: str):
    if isinstance(row, Exception):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"{loc}: expected a mapping, got {type(row).__name__}")
    tried = lambda names: ", ".join(repr(n) for n in names)  # noqa: E731
    name, prompt = _pick(row, fields.prompt)
    if name is None:
        raise DataError(f"{loc}: missing prompt field (tried {tried(fields.prompt)})")
    if not isinstance(prompt, str):
        raise DataError(f"{loc}: field {name!r} (prompt) must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise DataError(f"{loc}: field {name!r} (prompt) is empty")
    _text_ok(prompt, name, "prompt", loc)
    name, answer = _pick(row, fields.answer)
    if name is None:
        raise DataError(f"{loc}: missing answer field (tried {tried(fields.answer)})")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"{loc}: field {name!r} (answer) must be a string or a number, "
                        f"got {type(answer).__name__}")
    if isinstance(answer, float):
        answer = str(int(answer)) if answer.is_integer() else repr(answer)
    answer = str(answer)
    if not answer.strip():
        raise DataError(f"{loc}: field {name!r} (answer) is empty")
    _text_ok(answer, name, "answer", loc)
    name, hint = _pick(row, fields.hint)
    if isinstance(hint, (list, tuple)):
        if not all(isinstance(h, str) for h in hint):
            raise DataError(f"{loc}: field {name!r} (hint) must be a string or a list of strings")
        hint = "\n".join(hint)
    elif hint is not None and not isinstance(hint, str):
        raise DataError(f"{loc}: field {name!r} (hint) must be a string or a list of strings, "
                        f"got {type(hint).__name__}")
    if hint is not None:
        _text_ok(hint, "hint", "hint", loc)
    name, solution = _pick(row, fields.solution)
    if solution is not None and not isinstance(solution, str):
        raise DataError(f"{loc}: field {name!r} (solution) must be a string, got {type(solution).__name__}")
    if solution is not None:
        _text_ok(solution, name, "solution", loc)
    name, id_ = _pick(row, fields.id)
    if name is not None and (isinstance(id_, bool) or not isinstance(id_, (str, int))):
        raise DataError(f"{loc}: field {name!r} (id) must be a string or an integer, got {type(id_).__name__}")
    digest = hashlib.sha1(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    id_ = str(id_) if name is not None else f"{stem}/{digest}"
    ver = row.get("verifier") or verifier
    if ver not in VERIFIER_NAMES:
        raise DataError(f"{loc}: field 'verifier' is {ver!r}, not one of {', '.join(VERIFIER_NAMES)}")
    fmt, rx = _row_format(row, loc)
    diff = row.get("difficulty")
    if isinstance(diff, float) and diff.is_integer():
        diff = int(diff)
    if diff is not None and (isinstance(diff, bool) or not isinstance(diff, int)):
        raise DataError(f"{loc}: field 'difficulty' must be an integer, got {type(diff).__name__}")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{loc}: field 'meta' must be an object, got {type(meta).__name__}")
    src = row.get("source")
    src = src if isinstance(src, str) and src else source
    return Example(id=id_, prompt=prompt, answer=answer, hint=hint or None, solution=solution or None,
                   verifier=ver, source=src, difficulty=diff, meta=dict(meta), answer_format=fmt,
                   answer_regex=rx)


def _row_format(row: dict, loc: str) -> tuple[str, str | None]:
    """A row's own ``answer_format`` (default "auto") and ``answer_regex``, checked."""
    fmt = row.get("answer_format") or "auto"
    if not isinstance(fmt, str) or fmt not in ANSWER_FORMATS:
        raise DataError(f"{loc}: field 'answer_format' is {fmt!r}, not one of {', '.join(ANSWER_FORMATS)}")
    rx = row.get("answer_regex")
    if rx is not None:
        if not isinstance(rx, str) or not rx:
            raise DataError(f"{loc}: field 'answer_regex' must be a non-empty string")
        try:
            compile_regex(rx)
        except (re.error, RecursionError, OverflowError) as e:   # nested too deep; a{10**15}
            shown = rx if len(rx) <= 80 else rx[:77] + "..."
            raise DataError(f"{loc}: field 'answer_regex' {shown!r} does not compile: "
                            f"{e or type(e).__name__}") from None
    return fmt, rx


def rows_to_examples(rows: Iterable[tuple[int, dict]], origin: str, fields: Fields = Fields(),
                     verifier: str = "math", on_error: str = "raise",
                     unit: str = "line") -> tuple[list[Example], int]:
    """Rows -> (examples, number of rows skipped). ``origin`` names the file in messages and its
    stem becomes ``source`` (unless a row carries its own); ``unit`` is "line" (messages read
    ``file.jsonl:3: ...``) or "row" (``file.parquet[row 3]: ...``). A row may carry its own
    ``verifier``, ``difficulty``, ``source``, ``meta``, ``answer_format`` and ``answer_regex``
    (what ``Example.to_row`` writes)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if verifier not in VERIFIER_NAMES:
        raise ValueError(f"verifier must be one of {', '.join(VERIFIER_NAMES)}, not {verifier!r}")
    stem = Path(str(origin)).stem or str(origin)
    where = (lambda n: f"{origin}:{n}") if unit == "line" else (lambda n: f"{origin}[{unit} {n}]")
    out: list[Example] = []
    first_seen: dict[str, int] = {}
    skipped, reasons = 0, []
    for n, row in rows:
        try:
            ex = _row_to_example(row, fields, verifier, stem, stem, where(n))
            if ex.id in first_seen:
                raise DataError(f"{where(n)}: duplicate id {ex.id!r} (field id; first at "
                                f"{unit} {first_seen[ex.id]} and again at {unit} {n})")
        except DataError as e:
            if on_error == "raise":
                raise
            skipped += 1
            if len(reasons) < 3:
                reasons.append(str(e))
            continue
        first_seen[ex.id] = n
        out.append(ex)
    if skipped:
        log.warning("%s: skipped %d bad %ss, e.g. %s", origin, skipped, unit, " | ".join(reasons))
    return out, skipped


def load_file(path, fields: Fields = Fields(), verifier: str = "math",
              on_error: str = "raise") -> tuple[list[Example], int]:
    """A .jsonl/.json (JSON Lines) or .parquet file -> (examples, rows skipped)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet"):
        raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; "
                        "expected .jsonl, .json (JSON Lines) or .parquet")
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    _readable(path)
    if suffix == ".parquet":
        return rows_to_examples(iter_parquet(path), str(path), fields, verifier, on_error, unit="row")
    return rows_to_examples(iter_jsonl(path, errors="yield"), str(path), fields, verifier, on_error)


def load_champ(fields: Fields = Fields(), verifier: str = "math",
               on_error: str = "raise") -> tuple[list[Example], int]:
    """CHAMP (270 competition problems with hints) through the same path as users' files."""
    return rows_to_examples(iter_champ(), "champ", fields, verifier, on_error, unit="row")


def write_jsonl(path, examples: Iterable[Example]) -> None:
    """``Example.to_row()`` per line, written to a temporary file then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex.to_row(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
