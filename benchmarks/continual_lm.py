"""Continual SFT of a tiny LM, one synthetic family after another: AdamW vs AdamW + EWC vs CLASSP.

    python benchmarks/continual_lm.py --quick      # 1 seed, 400 steps per task (~6 min, 1 thread)
    python benchmarks/continual_lm.py              # 3 seeds, 600 steps per task (~30 min, 1 thread)
    python benchmarks/continual_lm.py --seeds 0 1 2 3 4 --methods adamw classp_p1

Model: paced's ``tiny`` preset (0.14M parameters) trained from scratch with ``paced.train.sft``
(AdamW, ``--base-steps``) on the three families at difficulty 1 (one non-zero digit): it learns
the answer format (reversed digits) and the operators, ~0.9-1.0 greedy there, ~0 at difficulty 2.
This base is shared by every method of a seed (cached in the out dir). Tasks (``TASKS``): add,
then sub, then mul1 at difficulty 2 (training problems seed 0, held-out ``--heldout-seed``, 1
for the reported numbers); task t is one ``paced.train.sft`` run of ``--steps`` steps starting
from the weights task t-1 ended with (task 0 from the base). After each task the model is scored
on every task's held-out problems (``paced.evaluate``: greedy, and mean@n at T = 1), giving
R[i][j] = accuracy on task j after task i. Metrics (paced/train/continual.py, Avalanche's definitions):
average accuracy (after the last task), forgetting, BWT = -forgetting, and learning accuracy
(each task right after it was learned: plasticity).

Methods (``METHODS``), one optimizer over the task sequence (as ``paced continual`` and the
CLASSP paper): each task's run starts from the previous task's optimizer state
(``sft.train(optimizer_state=...)``), so CLASSP's accumulators, and Adam's moments, carry over;
task 0 starts fresh (the base's AdamW state is not the method's).
    adamw      naive sequential fine-tuning
    adamw+ewc  the trainers' ``regularizer: ewc`` from task 1 on: anchored on the weights the task
               starts from, Fisher of the SFT loss on ``--fisher-n`` training problems of every
               earlier task, mode ``separate`` (one Fisher per earlier task, summed). Deviation
               from Avalanche's separate mode: earlier tasks' Fishers and anchors are re-taken at
               the start of each task instead of kept from the end of their own task.
    classp_p1  CLASSP, p = 1 (the paper's), ε = 1e-5
Hyper-parameters (defaults below, flags to change them): AdamW lr 3e-3 (the base's); CLASSP lr
and EWC λ from a small pilot on the quick setting, seed 0, scored on a validation split
(``--heldout-seed 2``), PILOT below; the lr schedule is constant after a 20-step warm-up in
every task. Writes benchmarks/results/continual_lm.json (matrices per seed, summaries).

PILOT (--quick --heldout-seed 2, seed 0, 5 settings per method, criterion: greedy average
accuracy after the last task; AdamW lr 3e-3 scores 0.172):
    classp_p1  lr 0.02: 0.078 | 0.05: 0.109 | 0.1: 0.120 | lr 0.05 threshold 1e-7: 0.083 | 1e-6: 0.089
    adamw+ewc  λ 1e3: 0.125 | 1e4: 0.083 | 1e5: 0.094 | 1e6: 0.177 | 1e7: 0.240
-> classp lr 0.1, threshold 0 and λ 1e7 (both at the edge of their grids). Under λ ≤ 1e5 the
penalty stays ~0.05-0.2 while add is still wiped by sub; only λ ≥ 1e6 held sub during mul1.
"""
from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from common import mean_std, parser, pm, quick_or_full, table, write_run  # noqa: E402

from paced import config as C  # noqa: E402
from paced.checkpoint import latest_checkpoint  # noqa: E402
from paced.train.continual import average_accuracy, backward_transfer, forgetting, learning_accuracy  # noqa: E402
from paced.evaluate import evaluate  # noqa: E402
from paced.models import load_model_and_tokenizer  # noqa: E402
from paced.tasks import load_sources  # noqa: E402
from paced.train import sft  # noqa: E402

TASKS = ("add", "sub", "mul1")
DIFFICULTY = [2, 2]
BASE = [1, 1]  # the base model's difficulty, every family
# method -> (optimizer fields, uses EWC, floats of optimizer + regularizer state per parameter)
METHODS = {
    "adamw": (lambda a: {"name": "adamw", "lr": a.adamw_lr}, False, 2),
    "adamw+ewc": (lambda a: {"name": "adamw", "lr": a.adamw_lr}, True, 4),
    "classp_p1": (lambda a: {"name": "classp", "lr": a.classp_lr,
                             "classp": C.ClasspCfg(p=1.0, threshold=a.classp_threshold)}, False, 1),
}


def source(family: str, n: int, seed: int) -> C.DataSource:
    return C.DataSource(source=family, n=n, difficulty=DIFFICULTY, seed=seed)


def sft_config(train: list, start: str | None, seed: int, steps: int, opt: dict, reg, run_dir: Path, a):
    return C.SFTConfig(
        model=C.ModelCfg(path=start, preset=None if start else "tiny", init_seed=seed),
        data=C.DataCfg(train=train), regularizer=reg,
        optim=C.OptimCfg(**{"warmup_steps": 20, "lr_scheduler_type": "constant", **opt}),
        train=C.TrainCfg(max_steps=steps, per_device_train_batch_size=a.batch, max_length=64),
        run=C.TrainRunCfg(dir=str(run_dir), seed=seed, threads=a.threads, progress=False, logging_steps=10 ** 6,
                          save_steps=0, save_total_limit=1))


def base_model(seed: int, a) -> str:
    """The shared starting point: tiny, from scratch, AdamW on every family at difficulty 1."""
    run_dir = Path(a.out_dir) / f"seed{seed}" / f"base-{a.base_steps}"
    if not (run_dir / "summary.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        sft.train(sft_config([C.DataSource(source=f, n=6000, difficulty=BASE, seed=0) for f in TASKS], None,
                             seed, a.base_steps, {"name": "adamw", "lr": 3e-3}, C.RegularizerCfg(), run_dir, a))
    return str(run_dir / "model")


def task_config(method: str, t: int, seed: int, start: str, run_dir: Path, a) -> C.SFTConfig:
    opt, uses_ewc, _ = METHODS[method]
    reg = C.RegularizerCfg()
    if uses_ewc and t > 0:
        reg = C.RegularizerCfg(name="ewc", ewc_lambda=a.ewc_lambda, fisher_batch_size=32, mode="separate",
                               fisher_data=[source(f, a.fisher_n, 0) for f in TASKS[:t]])
    return sft_config([source(TASKS[t], a.train_n, 0)], start, seed, a.steps, opt(a), reg, run_dir, a)


def run_sequence(method: str, seed: int, heldout: list, a, log) -> dict:
    """Train the task sequence once; R[i][j] (greedy and mean@n) after every task."""
    R = {"greedy": [], "mean@n": []}
    start, opt_state, wall = base_model(seed, a), None, 0.0
    for t, family in enumerate(TASKS):
        run_dir = Path(a.out_dir) / f"seed{seed}" / method / f"{t}-{family}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a stale longer run's checkpoint would be "latest"
        t0 = time.time()
        sft.train(task_config(method, t, seed, start, run_dir, a), optimizer_state=opt_state)
        wall += time.time() - t0
        opt_state = torch.load(latest_checkpoint(run_dir) / "trainer_state.pt", weights_only=True)["optimizer"]
        start = str(run_dir / "model")
        model, tok = load_model_and_tokenizer(start)
        scores = [evaluate(model, tok, exs, a.eval_n, [1], max_tokens=16, greedy=True, seed=seed)["overall"]
                  for exs in heldout]
        for k in R:
            R[k].append([s[k] for s in scores])
        log(f"seed {seed} {method:<10} after {family:<5} greedy "
            + " ".join(f"{s['greedy']:.2f}" for s in scores)
            + f" | mean@{a.eval_n} " + " ".join(f"{s['mean@n']:.2f}" for s in scores))
    return {"seed": seed, "R": R, "train_wall_s": wall,
            **{f"{name}/{k}": fn(R[k]) for k in R for name, fn in METRICS.items()}}


METRICS = {"average_accuracy": average_accuracy, "forgetting": forgetting, "bwt": backward_transfer,
           "learning_accuracy": learning_accuracy}


def summarise(results: dict) -> dict:
    out = {}
    for method, runs in results.items():
        keys = [k for k in runs[0] if "/" in k] + ["train_wall_s"]
        out[method] = {k: mean_std([r[k] for r in runs]) for k in keys}
        out[method]["R_mean"] = {k: [[statistics.mean(r["R"][k][i][j] for r in runs) for j in range(len(TASKS))]
                                     for i in range(len(TASKS))] for k in ("greedy", "mean@n")}
    return out


def print_tables(summary: dict, a) -> None:
    for method, r in summary.items():
        print(f"\n{method}: accuracy on each task (columns {', '.join(TASKS)}) after each task (rows), "
              f"greedy | mean@{a.eval_n}, mean over seeds")
        for i, fam in enumerate(TASKS):
            g, m = r["R_mean"]["greedy"][i], r["R_mean"]["mean@n"][i]
            print(f"  after {fam:<5} " + " ".join(f"{x:.3f}" for x in g) + "  |  "
                  + " ".join(f"{x:.3f}" for x in m))
    print("", *table(["method", "metric", "avg acc", "forgetting", "BWT", "learning acc", "state fl/param",
                      "train s"],
                     [[method, k, *(pm(r[f"{m}/{k}"]) for m in ("average_accuracy", "forgetting", "bwt",
                                                                "learning_accuracy")),
                       METHODS[method][2], f"{r['train_wall_s'][0]:.0f}"]
                      for method, r in summary.items() for k in ("greedy", "mean@n")]), sep="\n")
    print(f"(seeds {a.seeds}; tasks {' -> '.join(TASKS)}, difficulty {DIFFICULTY} (base: {a.base_steps} "
          f"steps at {BASE}); {a.steps} steps x {a.batch} per task; {a.heldout} held-out problems per task "
          f"(seed {a.heldout_seed}); adamw lr {a.adamw_lr}, classp lr {a.classp_lr} "
          f"threshold {a.classp_threshold}, ewc lambda {a.ewc_lambda})")


def write(a, results: dict, t0: float, done: bool) -> dict:
    summary = summarise(results)
    meta = dict(seeds=a.seeds, tasks=TASKS, difficulty=DIFFICULTY, base_steps=a.base_steps, heldout_seed=a.heldout_seed,
                steps=a.steps, batch=a.batch, train_n=a.train_n, heldout=a.heldout, eval_n=a.eval_n,
                adamw_lr=a.adamw_lr, classp_lr=a.classp_lr, classp_threshold=a.classp_threshold,
                ewc_lambda=a.ewc_lambda, fisher_n=a.fisher_n, threads=a.threads)
    write_run(a.out, a.quick, done, t0, meta, table=summary, runs=results)
    return summary


def main() -> None:
    ap = parser(__doc__, "1 seed, 400 steps per task, 64 held-out, mean@4", seeds=True)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--base-steps", type=int, default=1000, help="SFT steps of the base model")
    ap.add_argument("--steps", type=int, help="SFT steps per task (default 400 quick, 600 full)")
    ap.add_argument("--heldout-seed", type=int, default=1, help="1: the reported split; 2: the pilot's")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--adamw-lr", type=float, default=3e-3)
    ap.add_argument("--classp-lr", type=float, default=0.1)
    ap.add_argument("--classp-threshold", type=float, default=0.0)
    ap.add_argument("--ewc-lambda", type=float, default=1e7)
    ap.add_argument("--fisher-n", type=int, default=512, help="problems per earlier task in the EWC Fisher")
    ap.add_argument("--out-dir", default="runs/bench-continual-lm")
    ap.add_argument("--out", default="continual_lm.json", help="a file name in benchmarks/results/, or a path")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    quick_or_full(a, seeds=([0], [0, 1, 2]), steps=(400, 600), heldout=(64, 128), eval_n=(4, 8))
    a.train_n = 20000
    torch.set_num_threads(a.threads)
    heldout = [load_sources([source(f, a.heldout, a.heldout_seed)]) for f in TASKS]
    t0 = time.time()
    log = lambda msg: print(f"{msg} ({time.time() - t0:.0f}s)", flush=True)  # noqa: E731
    results: dict[str, list] = {}
    for seed in a.seeds:
        for method in a.methods:
            results.setdefault(method, []).append(run_sequence(method, seed, heldout, a, log))
            write(a, results, t0, done=False)  # a kill keeps every finished sequence
    print_tables(write(a, results, t0, done=True), a)


if __name__ == "__main__":
    main()
