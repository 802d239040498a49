"""Does CLASSP or EWC make PACED distillation forget less? The demo's distillation, optimizer swapped.

    python benchmarks/forgetting_in_distill.py --quick     # 1 seed, 64 held-out (~8 min, 1 thread)
    python benchmarks/forgetting_in_distill.py             # 3 seeds, 128 held-out (~20 min)
    python benchmarks/forgetting_in_distill.py --models runs/demo --seeds 0 1 2 3 4

Setup (the demo's distillation step, paced/demo.py and configs/demo.yaml): the demo's student
(tiny, trained on add + sub) and teacher (small, trained on add + mul1 + modular) from
``--models`` (student/model, teacher/model); pool = 600 add + 600 mul1 training problems (seed
0, difficulty 1-8); PACED forward KL on the teacher's greedy responses, weighting beta
(α = β = 1, p̂ from 8 rollouts, estimated once), batch 32, warm-up 20 then a constant lr, grad
clip 1. Target: held-out add; forgetting probe: held-out sub (the student's other family, not
in the pool); both mean@8 (T = 1) and greedy, before and after.

Arms (``ARMS``): AdamW at the demo's lr 1e-4 (not searched: the reference); CLASSP p = 1 (the
paper's) and p = 2 (AdaGrad with a threshold), ε = 1e-5; AdamW + EWC (``regularizer: ewc``): the
Fisher of the student's own SFT loss on 512 add + 512 sub reference solutions (seed 0, one pass
of batches of 32, pooled), anchored on the starting student.

Hyper-parameter search (``GRID``, the same number of settings per searched method): every
setting of CLASSP p = 1 (lr × threshold), CLASSP p = 2 (lr × threshold) and EWC (λ) is run once
on seed 0 and scored on a *validation* split (held-out add and sub at generator seed 200, not
the test seeds 100 + seed) by target mean@8 + probe mean@8 after training (gain minus
forgetting, up to a constant); the best setting of each method then runs on every seed and is
scored on the test split. 4 settings per method (--quick too: an arm takes ~20-40 s).
Where the grids come from (the demo student, 1 thread): per-element g² of an SFT batch has
median ~4e-8 and 75th percentile ~4e-7, so threshold 1e-7 skips about half of the elements at
a step; p = 1 moves an element ≈ lr·ln(steps) in total, p = 2 ≈ 2·lr·√steps. A pilot on the
validation split (seed 0, 300 steps): p = 1 at lr 1e-2 wiped the probe (greedy 0.98 -> 0.06),
p = 2 at lr 1e-3 forgot as much as AdamW for half its gain, EWC at λ = 1e5 kept the probe and
gained little; Σ F (θ − θ*)² of the demo's lr-3e-4 run (which wiped the probe) is ~7e-6.

Reported per arm (mean ± std over seeds): target mean@8 / greedy after and their gain; probe
mean@8 / greedy after and their drop; the optimizer + regularizer state in floats per
parameter (AdamW 2, CLASSP 1, AdamW + EWC 4). Writes benchmarks/results/forgetting_in_distill.json.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from common import mean_std, parser, quick_or_full, table, write_run  # noqa: E402

from paced import config as C  # noqa: E402
from paced.models import count_parameters, load_model_and_tokenizer  # noqa: E402
from paced.train.distill import train as distill  # noqa: E402

POOL, TARGET, PROBE = [("add", [1, 8]), ("mul1", [1, 8])], ("add", [1, 8]), ("sub", [1, 8])
FISHER = [C.DataSource(source=f, n=512, difficulty=[1, 8], seed=0) for f in ("add", "sub")]
VAL_SEED = 200
# arm -> (optimizer fields, regularizer fields, floats of state per parameter)
ARMS = {
    "adamw": ({"name": "adamw", "lr": 1e-4}, {}, 2),
    "classp_p1": ({"name": "classp", "classp_p": 1.0}, {}, 1),
    "classp_p2": ({"name": "classp", "classp_p": 2.0}, {}, 1),
    "adamw+ewc": ({"name": "adamw", "lr": 1e-4}, {"name": "ewc"}, 4),
}
# searched settings (the same number per searched method; AdamW keeps the demo's lr 1e-4)
GRID = {
    "classp_p1": [{"lr": lr, "classp_threshold": th} for lr in (1e-3, 3e-3) for th in (0.0, 1e-7)],
    "classp_p2": [{"lr": lr, "classp_threshold": th} for lr in (3e-4, 1e-3) for th in (0.0, 1e-7)],
    "adamw+ewc": [{"ewc_lambda": lam} for lam in (1e3, 3e3, 1e4, 1e5)],
}


def source(spec, n, seed):
    return C.DataSource(source=spec[0], n=n, difficulty=spec[1], seed=seed)


def arm_config(arm: str, setting: dict, seed: int, eval_seed: int, run_dir: Path, a) -> C.DistillConfig:
    opt, reg, _ = ARMS[arm]
    opt = {**opt, **{k: v for k, v in setting.items() if k != "ewc_lambda"}}
    reg = {**reg, **({"ewc_lambda": setting["ewc_lambda"]} if "ewc_lambda" in setting else {})}
    tag = f"seed{seed}"
    return C.DistillConfig(
        student=C.ModelCfg(path=str(Path(a.models) / "student" / "model")),
        teacher=C.TeacherCfg(path=str(Path(a.models) / "teacher" / "model")),
        data=C.DataCfg(train=[source(s, a.pool // len(POOL), 0) for s in POOL],
                       eval=[source(TARGET, a.heldout, eval_seed)],
                       forgetting=[source(PROBE, a.heldout, eval_seed)]),
        distill=C.DistillCfg(stages=[C.StageCfg(name="start", loss_type="forward_kl", max_steps=a.steps,
                                                weighting="beta")],
                             per_device_train_batch_size=a.batch, eval_n=8),
        sampling=C.SamplingCfg(max_completion_length=24, batch_size=512), passrate=C.PassrateCfg(num_generations=8),
        optim=C.OptimCfg(**{"warmup_steps": 20, "lr_scheduler_type": "constant", **opt}),
        regularizer=C.RegularizerCfg(**({"fisher_data": FISHER, "fisher_batch_size": 32, **reg}
                                        if reg else {})),
        # one ledger and model tag per seed: the first p̂ estimate is shared by every arm
        ledger=C.LedgerCfg(path=str(Path(a.out_dir) / f"ledger-{tag}.sqlite"), model=f"student-{tag}"),
        run=C.TrainRunCfg(dir=str(run_dir), seed=seed, threads=a.threads, progress=False, logging_steps=10 ** 6,
                          save_steps=0, save_total_limit=1))


def scores(summary: dict) -> dict:
    b, f = summary["after"], summary["before"]
    return {"target_mean8": b["target"]["mean@n"], "target_greedy": b["target"]["greedy"],
            "probe_mean8": b["forgetting"]["mean@n"], "probe_greedy": b["forgetting"]["greedy"],
            "target_gain_mean8": b["target"]["mean@n"] - f["target"]["mean@n"],
            "target_gain_greedy": b["target"]["greedy"] - f["target"]["greedy"],
            "probe_drop_mean8": f["forgetting"]["mean@n"] - b["forgetting"]["mean@n"],
            "probe_drop_greedy": f["forgetting"]["greedy"] - b["forgetting"]["greedy"],
            "before": f}


def search(a, log) -> dict:
    """Best setting per searched method on the validation split (seed 0)."""
    chosen, trials = {}, {}
    for arm in a.arms:
        grid = GRID.get(arm, [{}])[: a.grid]
        if len(grid) == 1:
            chosen[arm] = grid[0]
            continue
        for i, setting in enumerate(grid):
            run_dir = Path(a.out_dir) / "search" / f"{arm}-{i}"
            s = scores(distill(arm_config(arm, setting, 0, VAL_SEED, run_dir, a)))
            s["score"] = s["target_mean8"] + s["probe_mean8"]
            trials.setdefault(arm, []).append({"setting": setting, **s})
            log(f"search {arm:<10} {setting} val target mean@8 {s['target_mean8']:.3f} probe mean@8 "
                f"{s['probe_mean8']:.3f} -> score {s['score']:.3f}")
        chosen[arm] = max(trials[arm], key=lambda t: t["score"])["setting"]
    return {"chosen": chosen, "trials": trials}


def summarise(results: dict) -> dict:
    keys = ("target_mean8", "target_greedy", "target_gain_mean8", "target_gain_greedy",
            "probe_mean8", "probe_greedy", "probe_drop_mean8", "probe_drop_greedy")
    return {arm: {**{k: mean_std([r[k] for r in runs]) for k in keys},
                  "before": {split: {m: statistics.mean(r["before"][split][m] for r in runs)
                                     for m in ("mean@n", "greedy")} for split in ("target", "forgetting")}}
            for arm, runs in results.items()}


SHORT = {"lr": "lr", "classp_threshold": "thr", "ewc_lambda": "λ"}


def print_table(summary: dict, found: dict, a, n_params: int) -> None:
    f = lambda m: f"{m[0]:+.3f} ± {m[1]:.3f}" if m[0] < 0 else f"{m[0]:.3f} ± {m[1]:.3f}"  # noqa: E731
    rows = []
    for arm, r in summary.items():
        setting = {**{k: v for k, v in ARMS[arm][0].items() if k in SHORT}, **found["chosen"][arm]}
        rows.append([arm, " ".join(f"{SHORT[k]}={v:g}" for k, v in setting.items()),
                     *(f(r[k]) for k in ("target_mean8", "target_gain_mean8", "target_greedy", "probe_mean8",
                                         "probe_drop_mean8", "probe_greedy", "probe_drop_greedy")),
                     f"{ARMS[arm][2] * n_params * 4 / 2 ** 20:.2f}"])
    print("", *table(["arm", "setting", "target m@8", "gain", "target greedy", "probe m@8", "drop", "probe greedy",
                      "greedy drop", "state MiB"], rows), sep="\n")
    b = next(iter(summary.values()))["before"]
    print(f"(the student before: target mean@8 {b['target']['mean@n']:.3f} greedy {b['target']['greedy']:.3f}, "
          f"probe mean@8 {b['forgetting']['mean@n']:.3f} greedy {b['forgetting']['greedy']:.3f}, "
          "mean over seeds)")
    print(f"(seeds {a.seeds}; {a.steps} steps x {a.batch} problems; pool {a.pool}; {a.heldout} held-out "
          f"problems per split; gain = after - before, drop = before - after; mean ± std over seeds)")


def write(a, found, results, t0, done) -> dict:
    summary = summarise(results)
    meta = dict(seeds=a.seeds, steps=a.steps, pool=a.pool, heldout=a.heldout, batch=a.batch, threads=a.threads,
                models=a.models, grid_per_method=a.grid, val_seed=VAL_SEED)
    write_run(a.out, a.quick, done, t0, meta, search=found, table=summary, runs=results)
    return summary


def main() -> None:
    ap = parser(__doc__, "1 seed, 64 held-out problems per split", seeds=True)
    ap.add_argument("--models", default="runs/demo", help="demo run dir with student/model and teacher/model")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out-dir", default="runs/bench-forgetting")
    ap.add_argument("--out", default="forgetting_in_distill.json", help="a file name in benchmarks/results/, or a path")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int)
    a = ap.parse_args()
    quick_or_full(a, seeds=([0], [0, 1, 2]), heldout=(64, 128))
    a.grid = 4
    a.steps, a.pool, a.batch = a.steps or 300, 1200, 32
    torch.set_num_threads(a.threads)
    for who in ("student", "teacher"):
        if not (Path(a.models) / who / "model" / "config.json").exists():
            sys.exit(f"no {who} model in {a.models}/{who}/model: run `paced demo --run-dir {a.models}` first")
    n_params = count_parameters(load_model_and_tokenizer(Path(a.models) / "student" / "model")[0])
    t0 = time.time()
    log = lambda msg: print(f"{msg} ({time.time() - t0:.0f}s)", flush=True)  # noqa: E731
    found = search(a, log)
    results: dict[str, list] = {}
    for seed in a.seeds:
        for arm in a.arms:
            run_dir = Path(a.out_dir) / f"seed{seed}" / arm
            s = scores(distill(arm_config(arm, found["chosen"][arm], seed, 100 + seed, run_dir, a)))
            results.setdefault(arm, []).append({"seed": seed, **s})
            log(f"seed {seed} {arm:<10} target mean@8 {s['target_mean8']:.3f} "
                f"probe mean@8 {s['probe_mean8']:.3f}")
            write(a, found, results, t0, done=False)  # a kill keeps every finished arm
    print_table(write(a, found, results, t0, done=True), found, a, n_params)


if __name__ == "__main__":
    main()
