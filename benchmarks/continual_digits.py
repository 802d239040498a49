"""Does CLASSP forget less than EWC, SGD and Adam? Permuted-Digits and Split-Digits, every method.

    python benchmarks/continual_digits.py --quick   # 4-point grids, 2 search seeds, 5 seeds (~1-2 min)
    python benchmarks/continual_digits.py           # 8-point grids, 3 search seeds, 10 seeds (~5-10 min)
    python benchmarks/continual_digits.py --benchmarks permuted split split_class

Setup (``paced.train.continual``; everything else at ``ContinualCfg``'s defaults): scikit-learn's bundled
digits (1,797 8×8 images, no download), a fixed stratified split (data_seed 0: 30 % test, 20 % of
the rest validation), MLP 64-100-100-10 (ReLU), 5 epochs per task, batch 32, 5 tasks.
  permuted     5 tasks, each all 10 digits under its own pixel permutation (domain-incremental)
  split        5 tasks of 2 disjoint digits, task-incremental (each task scores its own 2 logits)
  split_class  the same tasks, class-incremental (all 10 logits scored; optional, --benchmarks)
Per seed: the class order / permutations, the initial weights and the batch order; all methods of
a seed see the same ones.

Methods (``paced.train.continual.METHODS``): sgd (plain SGD, no momentum), adam, ewc (Adam + EWC penalty,
Avalanche conventions, "separate" mode: one Fisher + anchor per task), classp_p1, classp_p2
(``paced.optim.CLASSP`` with p = 1 / 2), mas (Adam + Memory Aware Synapses). EWC and MAS sit on
Adam because on SGD a stiff penalty makes the step unstable once lr·λ·max F > 1: the search then
picks points at the edge of divergence that blow up on other seeds (``--reg-optimizer sgd`` runs
them on SGD with their own grids, ``SGD_REG``, for the comparison).

Hyper-parameter search (the same budget for every method: ``GRIDS`` has 8 points per method,
``QUICK`` 4): every grid point trains on the training split without the validation images
(holdout "val") under the search seeds (1000, 1001, 1002; quick: 1000, 1001 — never the reporting
seeds) and is scored by the average accuracy over all tasks on the validation images after the
last task, averaged over the search seeds. Points whose loss became non-finite on any search seed
are not chosen; ties go to the earlier grid point. The chosen point is then trained on train + val
under the reporting seeds (0..9; quick 0..4) and scored on the untouched test split. Grids:
learning rates around each optimizer's usual range; EWC / MAS lr × λ; CLASSP lr × threshold, the
thresholds {0, 1e-6} on the per-element g² (1e-6 ≈ the median non-zero g² of this MLP's
mini-batch gradients at initialisation, so about half of the elements that have a gradient are
held back).

Reported per benchmark and method (mean ± std over the reporting seeds): average accuracy,
forgetting and BWT (Avalanche's definitions, ``paced.train.continual``), optimizer-state bytes (EWC /
MAS: + their stored tensors) and wall time (training + consolidation, 1 thread by default).
Writes benchmarks/results/continual_digits.json (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch  # noqa: E402

from common import machine, write_json  # noqa: E402
from paced.config import ContinualCfg  # noqa: E402
from paced.train.continual import (METHODS, make_tasks, mean_matrix, method_hyper, results_table,  # noqa: E402
                                   run_method, summarize, with_hyper)
from paced.runlog import console  # noqa: E402

BENCHMARKS = {"permuted": {"benchmark": "permuted"},
              "split": {"benchmark": "split", "scenario": "task"},
              "split_class": {"benchmark": "split", "scenario": "class"}}


def _grid(**axes) -> list[dict]:
    """Cartesian product of the axes, first axis outermost."""
    points = [{}]
    for k, values in axes.items():
        points = [{**p, k: v} for p in points for v in values]
    return points


GRIDS = {  # 8 points per method
    "sgd": _grid(sgd_lr=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]),
    "adam": _grid(adam_lr=[1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]),
    "ewc": _grid(ewc_lr=[1e-3, 3e-3], ewc_lambda=[100.0, 1000.0, 1e4, 1e5]),
    "classp_p1": _grid(classp_p1_lr=[0.01, 0.03, 0.1, 0.3], classp_p1_threshold=[0.0, 1e-6]),
    "classp_p2": _grid(classp_p2_lr=[0.003, 0.01, 0.03, 0.1], classp_p2_threshold=[0.0, 1e-6]),
    "mas": _grid(mas_lr=[1e-3, 3e-3], mas_lambda=[1.0, 10.0, 100.0, 1000.0]),
}
QUICK = {  # 4 points per method
    "sgd": _grid(sgd_lr=[0.03, 0.1, 0.3, 1.0]),
    "adam": _grid(adam_lr=[3e-4, 1e-3, 3e-3, 1e-2]),
    "ewc": _grid(ewc_lr=[1e-3, 3e-3], ewc_lambda=[1000.0, 1e4]),
    "classp_p1": _grid(classp_p1_lr=[0.03, 0.1], classp_p1_threshold=[0.0, 1e-6]),
    "classp_p2": _grid(classp_p2_lr=[0.01, 0.03], classp_p2_threshold=[0.0, 1e-6]),
    "mas": _grid(mas_lr=[1e-3, 3e-3], mas_lambda=[10.0, 100.0]),
}
# --reg-optimizer sgd: EWC and MAS on plain SGD instead (their learning rates are SGD's)
SGD_REG = {"full": {"ewc": _grid(ewc_lr=[0.1, 0.3], ewc_lambda=[10.0, 100.0, 1000.0, 3000.0]),
                    "mas": _grid(mas_lr=[0.1, 0.3], mas_lambda=[1.0, 10.0, 30.0, 100.0])},
           "quick": {"ewc": _grid(ewc_lr=[0.1, 0.3], ewc_lambda=[100.0, 1000.0]),
                     "mas": _grid(mas_lr=[0.1, 0.3], mas_lambda=[10.0, 100.0])}}
assert set(GRIDS) == set(QUICK) == set(METHODS)
assert len({len(g) for g in [*GRIDS.values(), *SGD_REG["full"].values()]}) == 1
assert len({len(g) for g in [*QUICK.values(), *SGD_REG["quick"].values()]}) == 1


def on_base(c: ContinualCfg, optimizer: str) -> ContinualCfg:
    """EWC and MAS on the base optimizer ``optimizer`` (adam or sgd)."""
    return with_hyper(with_hyper(c, "ewc", {"ewc_optimizer": optimizer}), "mas", {"mas_optimizer": optimizer})


def search(base: ContinualCfg, method: str, grid: list[dict], seeds: list[int]) -> tuple[dict, list[dict]]:
    """Every grid point on holdout "val" under ``seeds``; returns (best point, all scored points).

    Best = the highest mean validation average accuracy among the points whose loss stayed finite
    on every search seed (a point on the edge of divergence is not chosen); ties -> earlier point.
    """
    cfg = dataclasses.replace(base, holdout="val")
    tasks = {s: make_tasks(cfg, s) for s in seeds}
    scored = []
    for point in grid:
        c = with_hyper(cfg, method, point)
        runs = [run_method(method, tasks[s], c, s) for s in seeds]
        accs = [r["average_accuracy"] for r in runs]
        scored.append({"hyper": point, "val_accuracy": statistics.fmean(accs), "per_seed": accs,
                       "diverged": any(r["diverged"] for r in runs)})
    ok = [i for i, p in enumerate(scored) if not p["diverged"]] or list(range(len(scored)))
    best = max(ok, key=lambda i: (scored[i]["val_accuracy"], -i))
    return scored[best]["hyper"], scored


def evaluate(base: ContinualCfg, method: str, point: dict, seeds: list[int]) -> list[dict]:
    """The chosen point trained on train + val, scored on test, under every reporting seed."""
    c = with_hyper(dataclasses.replace(base, holdout="test"), method, point)
    return [run_method(method, make_tasks(c, s), c, s) for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4-point grids, 2 search seeds, 5 seeds")
    ap.add_argument("--benchmarks", nargs="+", default=["permuted", "split"], choices=list(BENCHMARKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", type=int, default=None, help="reporting seeds 0..N-1 (quick 5, full 10)")
    ap.add_argument("--reg-optimizer", default="adam", choices=("adam", "sgd"),
                    help="base optimizer of ewc and mas (default adam; sgd uses SGD_REG's grids)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default="continual_digits.json", help="a file name in benchmarks/results/, or a path")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    grids = dict(QUICK if a.quick else GRIDS)
    if a.reg_optimizer == "sgd":
        grids.update(SGD_REG["quick" if a.quick else "full"])
    search_seeds = [1000, 1001] if a.quick else [1000, 1001, 1002]
    seeds = list(range(a.seeds if a.seeds is not None else (5 if a.quick else 10)))
    if len(seeds) < 1:
        ap.error("--seeds must be >= 1")
    t_start = time.perf_counter()
    out = {"mode": "quick" if a.quick else "full", "threads": a.threads, "machine": machine(),
           "search_seeds": search_seeds,
           "seeds": seeds, "reg_optimizer": a.reg_optimizer, "grids": {m: grids[m] for m in a.methods},
           "config": dataclasses.asdict(on_base(ContinualCfg(), a.reg_optimizer)),
           "benchmarks": {}}
    for name in a.benchmarks:
        base = on_base(ContinualCfg(**BENCHMARKS[name]), a.reg_optimizer)
        t0 = time.perf_counter()
        chosen, searched, runs = {}, {}, {}
        for m in a.methods:
            chosen[m], searched[m] = search(base, m, grids[m], search_seeds)
            runs[m] = evaluate(base, m, chosen[m], seeds)
            val = next(p["val_accuracy"] for p in searched[m] if p["hyper"] == chosen[m])
            console.print(f"{name} {m:<10} chosen {chosen[m]} (val acc {val:.4f}); test avg acc "
                          f"{statistics.fmean(r['average_accuracy'] for r in runs[m]):.4f}")
        summaries = {m: summarize(runs[m]) for m in a.methods}
        console.print(results_table(summaries, f"{name}-digits: {base.num_tasks} tasks, {len(seeds)} "
                                               f"seeds, test split (mean ± std)"))
        out["benchmarks"][name] = {
            "settings": BENCHMARKS[name], "seconds": time.perf_counter() - t0,
            "methods": {m: {"chosen": chosen[m],
                            "hyper": method_hyper(m, with_hyper(base, m, chosen[m])),
                            "search": searched[m], "summary": summaries[m],
                            "mean_R": mean_matrix(runs[m]), "runs": runs[m]} for m in a.methods}}
    out["seconds"] = time.perf_counter() - t_start
    console.print(f"{out['seconds']:.0f} s; wrote {write_json(a.out, out)}")


if __name__ == "__main__":
    main()
