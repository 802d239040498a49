"""The benchmarks' shared harness: what every script needs and none should write again.

- ``machine()``: date, platform, CPU, library versions, load average, git commit and the files
  changed since it, for the results JSON; ``machine_line`` is the line report.py prints from it.
- ``interleaved(fns, repeats)``: every contender once per round, in an order rotated by one
  each round (slow spells of a shared machine hit all alike), after warm-up calls, within a
  time budget; ``spread(seconds)`` (median, IQR), ``median``, ``paired_ratio`` (median and IQR of
  the per-round ratios: both ran back to back, so the machine's drift cancels).
- ``parser`` (``--quick``, ``--seeds``) and ``quick_or_full`` (the defaults of each mode);
  ``mean_std`` over seeds and ``pm`` (its "mean ± std"); ``write_run``: a seeded benchmark's
  JSON with its ``run_meta`` record, after every finished run.
- ``write_json(name, payload)`` under benchmarks/results/ (or a path), atomically; ``read_json``;
  ``table`` (console or markdown), ``section``, ``f3``.
- ``in_child`` / ``peak_rss``: memory of one step in a fresh process (RSS, VmHWM reset).

Imports neither torch nor paced at module level (report.py uses it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def have_trl() -> bool:
    try:
        import trl  # noqa: F401
        return True
    except ImportError:
        return False


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=False, capture_output=True, text=True).stdout
    except OSError:
        return ""


def machine() -> dict:
    """Date, platform, CPU, library versions, load average, git commit and the uncommitted files
    under paced/, benchmarks/ and tests/ (what the numbers may not be from), for the results JSON."""
    import torch
    import transformers
    info = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if have_trl():
        import trl
        info["trl"] = trl.__version__
    else:
        info["trl"] = None
    info["git"] = _git("rev-parse", "--short", "HEAD").strip()
    info["uncommitted"] = [line[3:] for line in _git("status", "--porcelain", "paced", "benchmarks",
                                                      "tests").splitlines()]
    return info


def machine_line(res: dict) -> str:
    """The line under a table: the run's date and machine from the JSON's "machine" record
    (``machine()``'s), or what the JSON holds instead; ``res["_file"]`` names the file."""
    meta, name = res.get("meta", {}), res["_file"]
    m = res.get("machine") or meta.get("machine")
    if m:
        when = dt.datetime.fromisoformat(m["date"]).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        libs = f"torch {m['torch']}, transformers {m['transformers']}" + (f", TRL {m['trl']}" if m.get("trl") else "")
        load_ = f", load {m['loadavg_start'][0]:.1f} at the start" if m.get("loadavg_start") else ""
        return f"*`{name}`: run {when} on a {m['cpus']}-core {m.get('cpu', 'CPU')} machine, {libs}{load_}, " \
               f"git {m.get('git', '?')}.*"
    torch, threads, date = (meta.get(k) or res.get(k) for k in ("torch", "threads", "date"))
    bits = [f"torch {torch}" if torch else "", f"{threads} thread{'s' * (threads != 1)}" if threads else "",
            f"{res['cpu_count']} CPUs" if res.get("cpu_count") else "",
            f"{meta['minutes']} min" if meta.get("minutes") else ""]
    return f"*`{name}`: " + (f"run {date}" if date else "no date recorded") + "".join(f", {b}" for b in bits if b) + \
        "; the JSON holds no machine record (CPU model and other library versions are not stored).*"


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
@dataclass
class Timed:
    """What ``interleaved`` measured: per contender the wall seconds of each timed call and what
    it returned (in round order), and the contenders that raised (with the error)."""
    seconds: dict[str, list[float]]
    results: dict[str, list]
    failed: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    wall_s: float = 0.0


def interleaved(fns: dict[str, Callable[[int], object]], repeats: int, warmup: int = 0,
                budget_s: float | None = None, min_repeats: int = 2, tolerate: bool = False,
                after_round: Callable[[int, float], None] | None = None) -> Timed:
    """Call every ``fns[name](r)`` once per round r = 0 .. repeats-1, in an order rotated by one
    each round, after ``warmup`` untimed calls each (r = -1, -2, ...); stop early, after at least
    ``min_repeats`` rounds, once ``budget_s`` seconds are spent. ``tolerate``: a contender that
    raises is dropped (its error kept) instead of stopping everything."""
    names = list(fns)
    for n in names:
        for w in range(warmup):
            fns[n](-1 - w)
    out = Timed({n: [] for n in names}, {n: [] for n in names})
    start = time.perf_counter()
    for r in range(repeats):
        if budget_s is not None and r >= min_repeats and time.perf_counter() - start > budget_s:
            print(f"  time budget ({budget_s:.0f} s) spent after {r} rounds")
            break
        for n in names[r % len(names):] + names[:r % len(names)]:
            if n in out.failed:
                continue
            t0 = time.perf_counter()
            try:
                res = fns[n](r)
            except Exception as e:  # noqa: BLE001 (said, not hidden: the error is kept)
                if not tolerate:
                    raise
                out.failed[n] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                print(f"  {n} failed: {out.failed[n]}", flush=True)
                continue
            out.seconds[n].append(time.perf_counter() - t0)
            out.results[n].append(res)
        out.rounds = r + 1
        if after_round is not None:
            after_round(r, time.perf_counter() - start)
    out.wall_s = time.perf_counter() - start
    return out


def quartiles(xs: list[float]) -> list[float]:
    """[25th, 50th, 75th] percentile (linear interpolation, as numpy's default)."""
    xs = list(xs)
    return [xs[0]] * 3 if len(xs) == 1 else statistics.quantiles(xs, n=4, method="inclusive")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(seconds: list[float]) -> dict:
    """median_s, iqr_s and every value (all_s) of a list of seconds."""
    q = quartiles(seconds)
    return {"median_s": q[1], "iqr_s": [q[0], q[2]], "all_s": list(seconds)}


def paired_ratio(a: list[float], b: list[float]) -> dict:
    """Median and IQR of a_i / b_i over the pairs (values measured back to back)."""
    q = quartiles([x / y for x, y in zip(a, b)])
    return {"median": q[1], "iqr": [q[0], q[2]], "pairs": min(len(a), len(b))}


# ---------------------------------------------------------------------------------------------
# Seeds, defaults, the results JSON, tables and sections
# ---------------------------------------------------------------------------------------------
def mean_std(xs: list[float]) -> list[float]:
    """[mean, sample std] (std 0 for one value): the ± of every seeded table."""
    return [statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0]


def pm(v: list[float], d: int = 3) -> str:
    """``[mean, std]`` as "mean ± std"."""
    return f"{v[0]:.{d}f} ± {v[1]:.{d}f}"


def parser(doc: str, quick: str, seeds: bool = False) -> argparse.ArgumentParser:
    """The script's argument parser: described by its docstring's first paragraph, with
    ``--quick`` (``quick``: what the quick mode runs) and, for a seeded benchmark, ``--seeds``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    if seeds:
        ap.add_argument("--seeds", type=int, nargs="+")
    return ap


def quick_or_full(a, **defaults) -> None:
    """``a.<name> = quick if a.quick else full`` for each ``name=(quick, full)`` not given."""
    for name, (quick, full) in defaults.items():
        if getattr(a, name, None) is None:
            setattr(a, name, quick if a.quick else full)


def run_meta(quick: bool, done: bool, t0: float, **fields) -> dict:
    """The "meta" record of a seeded benchmark: date, mode, whether every run finished, the
    settings given, minutes so far and the machine."""
    return {"date": time.strftime("%Y-%m-%d"), "quick": quick, "complete": done, **fields,
            "minutes": round((time.time() - t0) / 60, 1), "machine": machine()}


def write_run(name: str | Path, quick: bool, done: bool, t0: float, meta: dict, indent: int | None = 2,
              **parts) -> Path:
    """A seeded benchmark's JSON, rewritten after every finished run (a kill keeps them):
    ``{"meta": run_meta(...), **parts}``; says where once ``done``."""
    path = write_json(name, {"meta": run_meta(quick, done, t0, **meta), **parts}, indent=indent)
    if done:
        print(f"wrote {path}")
    return path


def result_path(name: str | Path) -> Path:
    """A bare file name is one in benchmarks/results/; a path with a folder stays as it is."""
    path = Path(name)
    return RESULTS / path if not path.parent.parts else path


def write_json(name: str | Path, payload, indent: int | None = 2) -> Path:
    """``payload`` as JSON at ``result_path(name)``, atomically (``indent=None``: one line).
    Returns the path."""
    from paced.runlog import write_json as atomic
    atomic(path := result_path(name), payload, indent=indent)
    return path


READ: set[str] = set()   # the result files read_json has read (report.py lists the others)


def read_json(name: str) -> dict:
    """A result file of benchmarks/results/ (``name`` relative to it), with ``_file`` = name."""
    READ.add(name)
    return json.loads((RESULTS / name).read_text()) | {"_file": name}


def f3(x) -> str:
    """x to 3 decimals; "–" for None or NaN."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def section(title: str, intro: str, *body) -> list[str]:
    """The lines of a markdown section: heading (``## title``, or ``title`` when it is one
    already), intro paragraph, then each body part (a list of lines, or a paragraph)."""
    out = [f"## {title}" if not title.startswith("#") else title, "", intro, ""]
    for b in body:
        out += b if isinstance(b, list) else [b, ""]
    return out


def table(head: list[str], rows: list[list], markdown: bool = False) -> list[str]:
    """The lines of a table: markdown (with a blank line after), or columns padded for a
    console (numbers right-aligned)."""
    cells = [[str(c) for c in r] for r in rows]
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
               ["| " + " | ".join(r) + " |" for r in cells] + [""]
    width = [max(len(x) for x in col) for col in zip(head, *cells)]
    right = [all(_number(r[i]) for r in cells) and bool(cells) for i in range(len(head))]
    return ["  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, width, right)).rstrip()
            for r in [head, *cells]]


def _number(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("×x%"))
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Memory, one configuration per fresh process
# ---------------------------------------------------------------------------------------------
def proc_memory() -> dict:
    """This process's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def peak_rss(fn: Callable[[], object]) -> tuple[int, int, object]:
    """(resting RSS, peak RSS while ``fn()`` ran, its result), in bytes: the kernel's peak mark
    is reset first (``echo 5 > /proc/self/clear_refs``). Run in a fresh process (``in_child``)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS
        f.write("5")
    rest = proc_memory()["VmRSS"]
    out = fn()
    return rest, proc_memory()["VmHWM"], out


def in_child(script: str | Path, args: list[str], threads: int | None = None) -> dict:
    """Run ``script args`` in a fresh interpreter whose glibc returns freed memory to the OS
    (``MALLOC_MMAP_THRESHOLD_``: RSS then follows live memory) and read the JSON object its last
    stdout line prints; ``{"error": stderr tail}`` if it failed."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072",
               PYTHONWARNINGS="ignore", **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    p = subprocess.run([sys.executable, str(script), *args], check=False, capture_output=True, text=True,
                       env=env, cwd=ROOT)
    if p.returncode != 0:
        print(f"{Path(script).name} {' '.join(args)}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
        return {"error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])
