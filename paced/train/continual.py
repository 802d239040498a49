"""Continual-learning benchmark runner: Permuted-Digits / Split-Digits, CLASSP vs EWC vs baselines
(docs/methods.md §4, arXiv 2405.09637).

    paced continual --config configs/continual.yaml [continual.methods=[sgd,classp_p1] ...]

Algorithm (for every seed, every method; the same initial MLP and batch order for every method):
    digits  <- sklearn.datasets.load_digits: X (1797, 64) / 16, y (1797,); fixed stratified split
               train / val / test by continual.data_seed (holdout "test": train on train+val,
               score on test; holdout "val": train on train, score on val — model selection)
    tasks   <- permuted: T tasks, task t = all 10 classes with pixels permuted by π_t (π_t drawn
                         from the seed; every task permuted, as Avalanche's PermutedMNIST)
               split:    the 10 classes shuffled by the seed, cut into T disjoint groups; scenario
                         "task" scores only the task's own logits (task-incremental, one masked
                         head), "class" scores all 10 (class-incremental)
    model   <- MLP 64 -> hidden (-> hidden)* -> 10, ReLU, torch.manual_seed(seed)
    opt     <- METHODS[method](model, continual.<method>): sgd | adam | ewc (Adam or SGD + paced.optim.EWC) |
               classp_p1 | classp_p2 (paced.optim.CLASSP) | mas (Adam or SGD + paced.optim.MAS)
    for task i in 0..T-1:
        for epoch, mini-batch (x, y) of task i:   L = CE(logits, y) + penalty(θ); backward; step
        R[i][j] <- accuracy on task j's held-out images, for every j (also j > i)
        ewc / mas: consolidate on task i's training batches (Fisher or MAS importance, anchor θ*)
    metrics <- average accuracy, forgetting, BWT of R (below), optimizer-state bytes, wall time

Metrics (Avalanche's definitions, avalanche/evaluation/metrics/forgetting_bwt.py, StreamForgetting
and StreamBWT; R[i][j] = accuracy on task j after training on task i, T tasks):
    average accuracy = (1/T) Σ_j R[T-1][j]            (Lopez-Paz & Ranzato's ACC; Avalanche's
                        stream accuracy weights tasks by their test size — equal for permuted)
    forgetting       = (1/(T-1)) Σ_{j<T-1} (R[j][j] − R[T-1][j])   accuracy right after task j was
                        learned minus at the end; the last task has none (None when T = 1)
    BWT              = −forgetting                     (Avalanche's forgetting_to_bwt)
    learning acc.    = (1/T) Σ_j R[j][j]               (plasticity; an extra, not Avalanche's)
Optimizer-state memory: bytes of every tensor in optimizer.state (Adam: exp_avg, exp_avg_sq,
step; CLASSP: sum; plain SGD: none) plus the regulariser's stored tensors (EWC: a Fisher and an
anchor per consolidated task in "separate" mode, one pair in "online"; MAS: importance + anchor),
the maximum over the run (EWC and MAS consolidate after every task, the last included, as
Avalanche). Wall time: training plus consolidation, excluding the R evaluations.

Choices: naive SGD has no momentum; the base optimizer of EWC and MAS is ``ewc.optimizer`` /
``mas.optimizer``, Adam by default: on SGD a stiff penalty diverges once lr·λ·max F > 1 (its
curvature is 2λF), so the best λ on SGD sits at the edge of divergence. EWC consolidates on the
task's loss, MAS on its logits (the task's own columns in task-incremental split).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..optim import CLASSP, EWC, MAS

NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------------
# Metrics of an accuracy matrix (pure)
# ---------------------------------------------------------------------------------------------
def average_accuracy(R) -> float:
    """(1/T) Σ_j R[T-1][j]: mean accuracy over all tasks after the last one."""
    last = R[-1]
    return float(sum(last) / len(last))


def learning_accuracy(R) -> float:
    """(1/T) Σ_j R[j][j]: accuracy on each task right after learning it (plasticity; not an
    Avalanche stream metric, reported to show what forgetting-resistance costs)."""
    return float(sum(R[j][j] for j in range(len(R))) / len(R))


def task_forgetting(R) -> list[float]:
    """Per task j < T-1: R[j][j] − R[T-1][j] (accuracy right after learning j minus at the end)."""
    T = len(R)
    return [float(R[j][j] - R[T - 1][j]) for j in range(T - 1)]


def forgetting(R) -> float | None:
    """Avalanche's StreamForgetting after the last task: mean of task_forgetting (None if T = 1)."""
    per_task = task_forgetting(R)
    return sum(per_task) / len(per_task) if per_task else None


def backward_transfer(R) -> float | None:
    """Avalanche's StreamBWT: −forgetting (None if T = 1)."""
    f = forgetting(R)
    return None if f is None else -f


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Task:
    name: str
    x_train: torch.Tensor                 # (N, 64) float32 in [0, 1]
    y_train: torch.Tensor                 # (N,) int64: column of task_logits (digit if classes None)
    x_eval: torch.Tensor                  # (M, 64)
    y_eval: torch.Tensor                  # (M,)
    classes: list[int] | None = None      # task-incremental: the logits scored; None = all 10


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits (no download): X (1797, 64) float32 in [0, 1], y (1797,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # a clear message instead of a traceback (cli catches RuntimeError)
        raise RuntimeError("paced continual needs scikit-learn: pip install 'paced[continual]'") from e
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def split_indices(y: np.ndarray, test_fraction: float, val_fraction: float, data_seed: int):
    """Stratified (train, val, test) index arrays: per class, test_fraction of its images go to
    test and val_fraction of the rest to val. Deterministic in data_seed."""
    rng = np.random.default_rng(data_seed)
    parts = ([], [], [])
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * (len(idx) - n_test)))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def permutations(num_tasks: int, seed: int, dim: int = 64) -> list[np.ndarray]:
    """One pixel permutation per task, fixed by the seed."""
    rng = np.random.default_rng([seed, 1])
    return [rng.permutation(dim) for _ in range(num_tasks)]


def class_groups(num_tasks: int, seed: int) -> list[list[int]]:
    """The 10 digits shuffled by the seed and cut into num_tasks equal disjoint groups (sorted)."""
    if NUM_CLASSES % num_tasks:
        raise ValueError(f"split: {NUM_CLASSES} classes do not divide into {num_tasks} tasks")
    order = np.random.default_rng([seed, 2]).permutation(NUM_CLASSES)
    k = NUM_CLASSES // num_tasks
    return [sorted(int(c) for c in order[t * k:(t + 1) * k]) for t in range(num_tasks)]


def make_tasks(c, seed: int) -> list[Task]:
    """The task sequence of a ContinualCfg for one seed (see the module docstring)."""
    x, y = load_digits_arrays()
    train, val, test = split_indices(y, c.test_fraction, c.val_fraction, c.data_seed)
    if c.holdout == "test":
        train, held = np.sort(np.concatenate([train, val])), test
    else:
        held = val
    tasks = []
    if c.benchmark == "permuted":
        for t, perm in enumerate(permutations(c.num_tasks, seed)):
            xp = torch.from_numpy(x[:, perm])                                   # (1797, 64)
            tasks.append(Task(f"perm{t}", xp[train], torch.from_numpy(y[train]),
                              xp[held], torch.from_numpy(y[held])))
        return tasks
    xt = torch.from_numpy(x)
    for group in class_groups(c.num_tasks, seed):
        column = torch.full((NUM_CLASSES,), -1, dtype=torch.long)
        column[group] = torch.arange(len(group))                                # digit -> column
        task_il = c.scenario == "task"
        sets = []
        for idx in (train, held):
            idx = idx[np.isin(y[idx], group)]
            yy = torch.from_numpy(y[idx])
            sets += [xt[idx], column[yy] if task_il else yy]
        tasks.append(Task("split" + "".join(map(str, group)), *sets, classes=group if task_il else None))
    return tasks


def task_logits(model: nn.Module, x: torch.Tensor, classes: list[int] | None) -> torch.Tensor:
    """(B, 64) -> (B, 10) logits, or (B, len(classes)) for a task-incremental task."""
    out = model(x)                                                              # (B, 10)
    return out if classes is None else out[:, classes]


@torch.no_grad()
def accuracy(model: nn.Module, task: Task) -> float:
    model.eval()
    pred = task_logits(model, task.x_eval, task.classes).argmax(dim=1)         # (M,)
    return float((pred == task.y_eval).float().mean())


def build_mlp(hidden: int, layers: int, seed: int) -> nn.Sequential:
    """64 -> hidden (-> hidden)* -> 10 with ReLU; initialised from torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    dims = [64] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(dims[-1], NUM_CLASSES))


# ---------------------------------------------------------------------------------------------
# Methods: builder(model, continual.<method>) -> (optimizer, regulariser or None)
# ---------------------------------------------------------------------------------------------
def build_sgd(model, a):
    return torch.optim.SGD(model.parameters(), lr=a.lr), None


def build_adam(model, a):
    return torch.optim.Adam(model.parameters(), lr=a.lr), None


def build_ewc(model, a):
    base = torch.optim.Adam if a.optimizer == "adam" else torch.optim.SGD
    return base(model.parameters(), lr=a.lr), EWC(a.ewc_lambda, mode=a.mode, decay=a.decay)


def build_classp_p1(model, a):
    return CLASSP(model.parameters(), lr=a.lr, p=1.0, threshold=a.threshold, eps=a.eps), None


def build_classp_p2(model, a):
    return CLASSP(model.parameters(), lr=a.lr, p=2.0, threshold=a.threshold, eps=a.eps), None


def build_mas(model, a):
    base = torch.optim.Adam if a.optimizer == "adam" else torch.optim.SGD
    return base(model.parameters(), lr=a.lr), MAS(a.mas_lambda, a.alpha)


# method -> (model, its settings: continual.<method>) -> (optimizer, regulariser or None)
METHODS = {"sgd": build_sgd, "adam": build_adam, "ewc": build_ewc, "classp_p1": build_classp_p1,
           "classp_p2": build_classp_p2, "mas": build_mas}


def _flat_name(method: str, key: str) -> str:
    return key if key.startswith(method + "_") else f"{method}_{key}"


def method_hyper(method: str, c) -> dict:
    """A method's settings (``c.<method>``) under flat names: sgd_lr, ewc_lambda, mas_alpha, ..."""
    return {_flat_name(method, k): v for k, v in dataclasses.asdict(getattr(c, method)).items()}


def with_hyper(c, method: str, flat: dict):
    """``c`` with some of ``method``'s settings replaced, given by their flat names (method_hyper's)."""
    args = getattr(c, method)
    names = {_flat_name(method, f.name): f.name for f in dataclasses.fields(args)}
    return dataclasses.replace(c, **{method: dataclasses.replace(args, **{names[k]: v for k, v in flat.items()})})


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Σ bytes of every tensor in optimizer.state (0-dim step counters included)."""
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor))


# ---------------------------------------------------------------------------------------------
# One run: a method on a task sequence
# ---------------------------------------------------------------------------------------------
def batches_of(task: Task, batch_size: int, order: torch.Tensor | None = None):
    """Mini-batches (x (B, 64), y (B,)) of a task's training set, in ``order`` or as stored."""
    n = len(task.y_train)
    order = torch.arange(n) if order is None else order
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        yield task.x_train[idx], task.y_train[idx]


def run_method(method: str, tasks: list[Task], c, seed: int) -> dict:
    """Train ``method`` on ``tasks`` in order; returns R, the metrics, memory and timings."""
    model = build_mlp(c.hidden, c.layers, seed)
    opt, reg = METHODS[method](model, getattr(c, method))
    gen = torch.Generator().manual_seed(seed)
    R: list[list[float]] = []
    memory = wall = evaluation = 0.0
    fractions: list[float] = []
    diverged = False
    for task in tasks:
        def loss_fn(m, batch, classes=task.classes):
            return F.cross_entropy(task_logits(m, batch[0], classes), batch[1])

        t0 = time.perf_counter()
        model.train()
        for _ in range(c.epochs):
            for x, y in batches_of(task, c.batch_size, torch.randperm(len(task.y_train), generator=gen)):
                loss = loss_fn(model, (x, y))
                if reg is not None:
                    loss = loss + reg.penalty(model)
                diverged |= not math.isfinite(loss.item())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if isinstance(opt, CLASSP):
                    fractions.append(opt.last_update_fraction)
        if reg is not None:  # Avalanche: after every experience, the last one included
            def out_fn(m, batch, classes=task.classes):
                return task_logits(m, batch[0], classes)
            fn = out_fn if isinstance(reg, MAS) else loss_fn
            reg.consolidate(model, batches_of(task, c.batch_size), fn)
        wall += time.perf_counter() - t0
        t1 = time.perf_counter()
        R.append([accuracy(model, t) for t in tasks])
        evaluation += time.perf_counter() - t1
        memory = max(memory, optimizer_state_bytes(opt) + (reg.memory_bytes() if reg is not None else 0))
    return {"seed": seed, "R": R, "average_accuracy": average_accuracy(R), "forgetting": forgetting(R),
            "bwt": backward_transfer(R), "learning_accuracy": learning_accuracy(R),
            "task_forgetting": task_forgetting(R),
            "optimizer_state_bytes": int(memory), "wall_s": wall, "eval_s": evaluation,
            "update_fraction": statistics.fmean(fractions) if fractions else None, "diverged": diverged,
            "param_count": sum(p.numel() for p in model.parameters())}


METRICS = ("average_accuracy", "forgetting", "bwt", "learning_accuracy", "optimizer_state_bytes", "wall_s")


def summarize(runs: list[dict], keys=METRICS + ("update_fraction",)) -> dict:
    """{key: {"mean", "std"}} over runs (sample std, 0 for one run); None where a value is None."""
    vals = {k: [r[k] for r in runs] for k in keys}
    return {k: None if None in v else {"mean": statistics.fmean(v),
                                       "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for k, v in vals.items()}


def mean_matrix(runs: list[dict]) -> list[list[float]]:
    """Element-wise mean of the runs' accuracy matrices."""
    return np.mean([r["R"] for r in runs], axis=0).tolist()


def fmt_pm(s: dict | None, digits: int = 3) -> str:
    """'mean ± std' (or '-')."""
    return "-" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def results_table(summaries: dict[str, dict], title: str):
    """A rich table: one row per method, mean ± std over seeds."""
    from rich.table import Table

    table = Table(title=title)
    cols = ("method", "avg accuracy", "forgetting", "BWT", "learning acc", "state bytes", "wall s", "updated")
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right")
    for m, s in summaries.items():
        upd = s["update_fraction"]
        table.add_row(m, *(fmt_pm(s[k]) for k in METRICS[:4]),
                      f"{s['optimizer_state_bytes']['mean']:,.0f}", fmt_pm(s["wall_s"], digits=2),
                      "-" if upd is None else f"{upd['mean']:.1%}")
    return table


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def run(cfg) -> dict:
    """``paced continual``: every method on every seed -> continual.json + a table."""
    from ..rundir import start_run
    from ..runlog import console, write_json

    run_dir = start_run(cfg)
    c = cfg.continual
    seeds = c.seeds or [cfg.run.seed]
    runs: dict[str, list[dict]] = {m: [] for m in c.methods}
    task_names = {}
    for seed in seeds:
        tasks = make_tasks(c, seed)
        task_names[seed] = [t.name for t in tasks]
        for m in c.methods:
            r = run_method(m, tasks, c, seed)
            runs[m].append(r)
            f = "-" if r["forgetting"] is None else f"{r['forgetting']:.4f}"
            console.print(f"seed {seed} {m:<10} avg acc {r['average_accuracy']:.4f} | forgetting {f} | "
                          f"state {r['optimizer_state_bytes']:,} B | {r['wall_s']:.2f} s"
                          + (" | DIVERGED" if r["diverged"] else ""))
    summaries = {m: summarize(runs[m]) for m in c.methods}
    what = f"{c.benchmark}" + (f"/{c.scenario}-incremental" if c.benchmark == "split" else "")
    console.print(results_table(summaries, f"continual: {what}-digits, {c.num_tasks} tasks, "
                                           f"{len(seeds)} seed(s), holdout {c.holdout}"))
    result = {"command": "continual", "benchmark": c.benchmark,
              "scenario": c.scenario if c.benchmark == "split" else "domain", "num_tasks": c.num_tasks,
              "holdout": c.holdout, "seeds": seeds, "tasks": task_names, "epochs": c.epochs,
              "batch_size": c.batch_size, "model": {"hidden": c.hidden, "layers": c.layers},
              "methods": {m: {"hyper": method_hyper(m, c), "summary": summaries[m],
                              "mean_R": mean_matrix(runs[m]), "runs": runs[m]} for m in c.methods}}
    write_json(run_dir / "continual.json", result)
    console.print(f"wrote {run_dir / 'continual.json'}")
    return result


