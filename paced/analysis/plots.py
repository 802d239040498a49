"""Plots from results already on disk (eval.json, ...); no training code here.

    python -c "import json; from paced.analysis.plots import passk_curves, passk_from_eval; \
        passk_curves({'run': passk_from_eval(json.load(open('runs/eval/eval.json')))}, 'passk.png')"

``paced eval`` writes ``passk.png`` next to ``eval.json`` with ``passk_curves``, ``paced analyze``
``analyze.png`` with ``gain_split`` and ``paced snr`` ``snr.png`` with ``snr_curve``. matplotlib is
optional (``pip install 'paced[plots]'``): without it the functions print how to install it and
return None instead of failing.
"""
from __future__ import annotations

import math
from pathlib import Path


def passk_from_eval(eval_json: dict, source: str | None = None) -> dict[int, float]:
    """{k: pass@k} from an eval result's ``overall`` (or ``by_source[source]``), sorted by k."""
    section = eval_json["overall"] if source is None else eval_json["by_source"][source]
    out = {int(key.split("@", 1)[1]): float(v) for key, v in section.items()
           if key.startswith("pass@") and v is not None}
    return dict(sorted(out.items()))


def _pyplot(what: str = "plot"):
    """matplotlib.pyplot on the Agg backend, or None (after saying how to install it and that
    there will be no ``what``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..runlog import console
        console.print(f"matplotlib is not installed: no {what} (pip install 'paced\\[plots]')")
        return None
    return plt


def passk_curves(curves: dict[str, dict[int, float]], path, title: str = "",
                 errors: dict[str, dict[int, float]] | None = None) -> Path | None:
    """pass@k against k (log2 axis), one line per name, ± ``errors[name][k]`` (std) as a band.

    Saves a PNG at ``path`` and returns it, or None when matplotlib is missing.
    """
    plt = _pyplot()
    if plt is None:
        return None
    errors = errors or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks_all: set[int] = set()
    for name, curve in curves.items():
        ks = sorted(curve)
        ys = [curve[k] for k in ks]
        ks_all.update(ks)
        line, = ax.plot(ks, ys, "o-", ms=4, label=name)
        if name in errors:
            err = [errors[name].get(k, 0.0) for k in ks]
            ax.fill_between(ks, [max(0.0, y - e) for y, e in zip(ys, err)],
                            [min(1.0, y + e) for y, e in zip(ys, err)],
                            color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xscale("log", base=2)
    if ks_all:
        ticks = sorted(ks_all)
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlim(min(ticks) / 1.25, max(ticks) * 1.25)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    ax.set_title(title or "pass@k")
    if curves:
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


CLASS_COLORS = {"compression": "tab:blue", "capability_gain": "tab:green",
                "capability_loss": "tab:red", "unchanged_or_worse": "tab:orange", "unsolved": "tab:gray"}


def gain_split(points: list[tuple[float, float, str]], contributions: dict[str, float], path,
               k: int, title: str = "") -> Path | None:
    """``paced analyze``'s picture: left, each problem's pass@1 before (x) against its Δpass@1
    (y), coloured by class (the class says whether pass@k before was 0); right, each class's
    contribution to Δpass@1 as a bar.

    ``points`` are (pass@1 before, Δpass@1, class); ``contributions`` is {class: Δpass@1 part}.
    Saves a PNG at ``path`` and returns it, or None when matplotlib is missing.
    """
    plt = _pyplot()
    if plt is None:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for cls in contributions:
        xy = [(x, y) for x, y, c in points if c == cls]
        if xy:
            ax.scatter(*zip(*xy), s=18, alpha=0.6, color=CLASS_COLORS.get(cls), label=f"{cls} ({len(xy)})")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-1.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_xlabel(f"pass@1 before (classes by pass@{k} before)")
    ax.set_ylabel("Δpass@1 (after - before)")
    ax.legend(fontsize=8)
    names = list(contributions)
    bx.barh(names, [contributions[n] for n in names], color=[CLASS_COLORS.get(n, "tab:purple") for n in names])
    bx.axvline(0, color="black", lw=0.6)
    bx.invert_yaxis()
    bx.grid(alpha=0.3, axis="x")
    bx.set_xlabel(f"contribution to Δpass@1 (total {sum(contributions.values()):+.3f})")
    fig.suptitle(title or "capability gain vs compression")
    return _save(plt, fig, path)


def snr_curve(bins: list[dict], path, title: str) -> Path | None:
    """``paced snr``'s picture: the plain and the debiased cross-problem SNR against the bin
    centre of p̂ (``snr_by_bin``'s records; bins without an SNR, empty or of one problem, are
    gaps), each plain point labelled with its number of problems.

    Saves a PNG at ``path`` and returns it, or None when matplotlib is missing.
    """
    plt = _pyplot("snr.png")
    if plt is None:
        return None
    x = [(b["lo"] + b["hi"]) / 2 for b in bins]
    val = lambda b, k: b[k] if b[k] is not None and math.isfinite(b[k]) else math.nan  # noqa: E731
    y = [val(b, "snr") for b in bins]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, y, "o-", label="plain")
    ax.plot(x, [val(b, "snr_debiased") for b in bins], "s--", label="debiased (− tr(Cov)/N)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    for xi, yi, b in zip(x, y, bins):
        if not math.isnan(yi):
            ax.annotate(f"n={b['problems']}", (xi, yi), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("student pass rate p̂ (bin centre; ends: p̂ = 0 and p̂ = 1)")
    ax.set_ylabel("‖mean g‖² / tr(Cov g)")
    ax.set_title(f"cross-problem gradient SNR, {title}")
    return _save(plt, fig, path)
