"""``paced analyze BEFORE AFTER``: split a pass@1 gain into compression and capability gain.

    paced analyze runs/eval-base/eval.json runs/eval-rl/eval.json [--k 8] [--out DIR]

The Guide paper (arXiv 2506.13923, docs/methods.md §3) reads an RL run's improvement problem by
problem: *compression* turns pass@k into pass@1 on problems the model could already solve with
k samples; *capability gain* solves problems that were unsolved even at k. BEFORE and AFTER are
``eval.json`` files written by ``paced eval`` (or run directories holding one); they must hold
the same problems (matched by id, an error otherwise) with per-problem counts: n samples, c correct.

Every problem gets one class (p1 = pass@1 = c/n, pk = unbiased pass@k, ``ledger.pass_at_k``):

=====================  ==============================================================
``compression``        pk_before > 0, pk_after > 0 and p1_after > p1_before
``capability_gain``    pk_before == 0 and pk_after > 0 (unsolved before, solved now)
``capability_loss``    pk_before > 0 and pk_after == 0 (solved before, not any more)
``unchanged_or_worse`` pk_before > 0, pk_after > 0 and p1_after <= p1_before
``unsolved``           pk_before == 0 and pk_after == 0
=====================  ==============================================================

The classes partition the problems, so the total Δpass@1 (mean over problems of p1_after -
p1_before) is exactly the sum of the per-class contributions, sum over the class of Δp1 / #all
problems (computed in fractions, then rounded). Note: the unbiased pass@k is 0 exactly when c = 0,
for every k <= n, so the classes do not depend on k; k sets the pass@k columns that are reported.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

from ..ledger import pass_at_k

CLASSES = ("compression", "capability_gain", "capability_loss", "unchanged_or_worse", "unsolved")
SHORT = {"compression": "compression", "capability_gain": "cap. gain", "capability_loss": "cap. loss",
         "unchanged_or_worse": "no gain", "unsolved": "unsolved"}   # table headers
Counts = dict[str, tuple[int, int]]   # problem id -> (c correct, n samples)


# ---------------------------------------------------------------------------------- loading
def eval_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/eval.json`` when ``path`` is a directory; must exist."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such eval file (give an eval.json written by "
                                "'paced eval', or its run directory)")
    return p


def read_eval(path: str | Path) -> tuple[dict, Path]:
    """(parsed eval.json, its path); a clear error if it is not JSON or not an object."""
    p = eval_path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object as written by 'paced eval', "
                         f"got {type(data).__name__}")
    return data, p


def problem_counts(eval_json: dict, name: str) -> tuple[Counts, dict[str, str]]:
    """({id: (c, n)}, {id: source}) from an eval result's ``problems`` list.

    ``name`` (the file) goes into every error. Results without per-problem records (the
    trainers' held-out evals and summary.json keep only overall pass@k) are refused.
    """
    problems = eval_json.get("problems")
    if not isinstance(problems, list) or not problems:
        raise ValueError(f"{name}: no per-problem records ('problems' list with id, n, c); "
                         "paced analyze needs the eval.json written by 'paced eval' (the "
                         "trainers' held-out evals and summary.json keep only overall numbers)")
    counts: Counts = {}
    sources: dict[str, str] = {}
    for i, p in enumerate(problems):
        where = f"{name}: problems[{i}]"
        if not isinstance(p, dict) or not {"id", "n", "c"} <= set(p):
            raise ValueError(f"{where}: expected an object with 'id', 'n' and 'c'")
        n, c = p["n"], p["c"]
        if any(isinstance(x, bool) or not isinstance(x, int) for x in (n, c)) or not 0 <= c <= n or n < 1:
            raise ValueError(f"{where}: needs integers 0 <= c <= n and n >= 1, got c={c!r}, n={n!r}")
        pid = str(p["id"])
        if pid in counts:
            raise ValueError(f"{where}: duplicate problem id {pid!r} (ids must be unique to match problems)")
        counts[pid] = (c, n)
        sources[pid] = str(p.get("source") or "-")
    return counts, sources


def match_ids(before: Counts, after: Counts, names: tuple[str, str]) -> list[str]:
    """The common problem ids, in BEFORE's order; an error naming both files unless the id
    sets are equal (comparing different problem sets would change what pass@1 averages over)."""
    only_b = [i for i in before if i not in after]
    only_a = [i for i in after if i not in before]
    if not only_b and not only_a:
        return list(before)
    common = len(before) - len(only_b)
    show = lambda ids: ", ".join(repr(i) for i in ids[:3]) + (" ..." if len(ids) > 3 else "")  # noqa: E731
    parts = [f"{len(only_b)} only in {names[0]} ({show(only_b)})" if only_b else "",
             f"{len(only_a)} only in {names[1]} ({show(only_a)})" if only_a else ""]
    what = "no problem ids in common" if common == 0 else f"the problem ids differ ({common} in common)"
    raise ValueError(f"{what} between {names[0]} and {names[1]}: "
                     + "; ".join(p for p in parts if p)
                     + " — evaluate both models on the same problems")


def resolve_k(before: Counts, after: Counts, k: int | None, names: tuple[str, str]) -> int:
    """``k``, or by default the largest available: BEFORE's n (the smallest n over its problems),
    capped at AFTER's. An explicit k must be 1 <= k <= n of every problem in both files."""
    n_b, n_a = min(n for _, n in before.values()), min(n for _, n in after.values())
    if k is None:
        return min(n_b, n_a)
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    for n, name in ((n_b, names[0]), (n_a, names[1])):
        if k > n:
            raise ValueError(f"--k {k} is larger than the n={n} samples per problem in {name}")
    return k


# ---------------------------------------------------------------------------------- analysis
def classify(pk_before: float, pk_after: float, p1_before: Fraction, p1_after: Fraction) -> str:
    """The class of one problem (see the module docstring for the exact definitions)."""
    if pk_before == 0:
        return "capability_gain" if pk_after > 0 else "unsolved"
    if pk_after == 0:
        return "capability_loss"
    return "compression" if p1_after > p1_before else "unchanged_or_worse"


def problem_rows(before: Counts, after: Counts, ids: list[str], k: int,
                 sources: dict[str, str] | None = None) -> list[dict]:
    """One record per problem: counts, pass@1 / pass@k before and after, Δpass@1 and class."""
    rows = []
    for pid in ids:
        (cb, nb), (ca, na) = before[pid], after[pid]
        p1b, p1a = Fraction(cb, nb), Fraction(ca, na)
        pkb, pka = pass_at_k(nb, cb, k), pass_at_k(na, ca, k)
        rows.append({"id": pid, "source": (sources or {}).get(pid, "-"),
                     "class": classify(pkb, pka, p1b, p1a),
                     "c_before": cb, "n_before": nb, "c_after": ca, "n_after": na,
                     "pass@1_before": float(p1b), "pass@1_after": float(p1a),
                     "pass@k_before": pkb, "pass@k_after": pka,
                     "delta_pass@1": float(p1a - p1b)})
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over ``rows`` and, per class, count, share of problems and Δpass@1 contribution
    (sum over the class of Δp1 / len(rows)); the contributions add up to ``delta_pass@1``."""
    total = len(rows)
    p1b = [Fraction(r["c_before"], r["n_before"]) for r in rows]
    p1a = [Fraction(r["c_after"], r["n_after"]) for r in rows]
    delta = {cls: Fraction(0) for cls in CLASSES}
    count = {cls: 0 for cls in CLASSES}
    for r, b, a in zip(rows, p1b, p1a):
        delta[r["class"]] += (a - b) / total
        count[r["class"]] += 1
    return {"problems": total,
            "pass@1_before": float(sum(p1b) / total), "pass@1_after": float(sum(p1a) / total),
            "delta_pass@1": float(sum(delta.values())),
            "pass@k_before": sum(r["pass@k_before"] for r in rows) / total,
            "pass@k_after": sum(r["pass@k_after"] for r in rows) / total,
            "classes": {cls: {"count": count[cls], "share": count[cls] / total,
                              "delta_pass@1": float(delta[cls])} for cls in CLASSES}}


def headline(summary: dict) -> str:
    """'of +X pass@1: +Y from compression, +Z from capability gain, ...' (non-zero parts)."""
    parts = [f"{c['delta_pass@1']:+.3f} from {cls.replace('_', ' ')}"
             for cls, c in summary["classes"].items() if c["delta_pass@1"] != 0]
    return f"of {summary['delta_pass@1']:+.3f} pass@1: " + (", ".join(parts) or "no change")


def analyze(before: Counts, after: Counts, k: int | None = None,
            sources: dict[str, str] | None = None, names: tuple[str, str] = ("BEFORE", "AFTER")) -> dict:
    """The whole analysis over plain per-problem counts: k, overall and per-source summaries,
    the headline and the per-problem records (what ``analyze.json`` holds, less the paths)."""
    ids = match_ids(before, after, names)
    k = resolve_k(before, after, k, names)
    rows = problem_rows(before, after, ids, k, sources)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["source"], []).append(r)
    overall = summarize(rows)
    return {"k": k, "problems": len(rows), "overall": overall, "headline": headline(overall),
            "by_source": {s: summarize(g) for s, g in groups.items()}, "per_problem": rows}


# ---------------------------------------------------------------------------------- output
def tables(result: dict) -> list:
    """Rich tables: per class over all problems, and per source when there are several."""
    from rich.table import Table

    o, k = result["overall"], result["k"]
    t = Table(title=f"capability gain vs compression ({o['problems']} problems, k={k})",
              caption=f"pass@1 {o['pass@1_before']:.3f} -> {o['pass@1_after']:.3f}, "
                      f"pass@{k} {o['pass@k_before']:.3f} -> {o['pass@k_after']:.3f}")
    for col in ("class", "problems", "share", "Δpass@1"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for cls, c in o["classes"].items():
        t.add_row(cls, str(c["count"]), f"{c['share']:.1%}", f"{c['delta_pass@1']:+.4f}")
    t.add_row("all", str(o["problems"]), "100.0%", f"{o['delta_pass@1']:+.4f}", style="bold")
    out = [t]
    if len(result["by_source"]) > 1:
        s = Table(title="by source: Δpass@1 contribution (problems) per class")
        for col in ("source", "problems", "pass@1", "Δpass@1", *SHORT.values()):
            s.add_column(col, justify="left" if col == "source" else "right", no_wrap=True)
        for name, g in result["by_source"].items():
            s.add_row(name, str(g["problems"]), f"{g['pass@1_before']:.3f}→{g['pass@1_after']:.3f}",
                      f"{g['delta_pass@1']:+.3f}",
                      *("-" if not c["count"] else f"({c['count']})" if cls == "unsolved"
                        else f"{c['delta_pass@1']:+.3f} ({c['count']})" for cls, c in g["classes"].items()))
        out.append(s)
    return out


def run(before: str | Path, after: str | Path, k: int | None = None,
        out: str | Path | None = None) -> dict:
    """``paced analyze``: read both eval files, print the tables and the headline, write
    ``analyze.json`` and ``analyze.png`` into ``out`` (default: AFTER's directory)."""
    from .plots import gain_split
    from ..runlog import console, write_json

    (eb, pb), (ea, pa) = read_eval(before), read_eval(after)
    names = (str(pb), str(pa))
    cb, _ = problem_counts(eb, names[0])
    ca, sources = problem_counts(ea, names[1])
    result = {"before": names[0], "after": names[1], **analyze(cb, ca, k, sources, names)}
    out_dir = Path(out) if out is not None else pa.parent
    for t in tables(result):
        console.print(t)
    console.print(result["headline"])
    write_json(out_dir / "analyze.json", result)
    console.print(f"wrote {out_dir / 'analyze.json'}")
    rows = result["per_problem"]
    contributions = {c: v["delta_pass@1"] for c, v in result["overall"]["classes"].items()}
    if gain_split([(r["pass@1_before"], r["delta_pass@1"], r["class"]) for r in rows], contributions,
                  out_dir / "analyze.png", result["k"], f"{pb.parent.name} -> {pa.parent.name}"):
        console.print(f"wrote {out_dir / 'analyze.png'}")
    return result
