"""Does PACED beat its baselines? Same student, teacher, data and step budget for every arm.

    python benchmarks/paced_vs_baselines.py --quick        # 1 seed, one pool, short arms
    python benchmarks/paced_vs_baselines.py                # 3 seeds, 3 pools: the README's table
    python benchmarks/paced_vs_baselines.py --models runs/demo --seeds 0 1 2 3 4

Models: the demo's teacher and student (``--models``, default runs/demo; built with
``paced demo`` settings if missing). Design after docs/methods.md (pilot settings) (the pilot):
weighting matters when the pool holds problems the student cannot learn from, so the pool
mixes a learnable family (``add``: the teacher is near-perfect, the demo student's sampled p̂
spreads over [0, 1]) with one the student never saw (``mul1``: its p̂ is 0 everywhere; the
teacher is right on about half) at shares ``--shares`` (0, ¼, ½ of the pool). Held-out target:
other ``add`` problems (other seeds). Forgetting probe: subtraction, which the student knows
and the pool lacks.

Arms (``ARMS``): forward KL from the teacher with uniform / hard-filter / PACED (α = β = 1)
weights, at every share; and, at the middle share only (``--rkl-share``), on-policy reverse KL
from the teacher, reverse-KL self-distillation (frozen starting student with the answer in its
prompt) with the same three weightings each, and the two-stage schedule (PACED forward KL, then PACED reverse KL with p̂
re-estimated). Every arm trains ``steps`` optimizer steps of ``batch`` problems drawn from its
non-zero-weight pool. The first p̂ estimate is shared by every arm of a (seed, share) (same
student, same rollouts, one ledger), so arms differ only in what they do with it.

Reported per arm and share (mean ± std over seeds): held-out target mean@8 and greedy after
training, the forgetting-probe drop, and the first checkpoint step at which the arm reaches the
uniform arm's final target mean@8 (curves from checkpoints every ``eval_every`` steps). Writes
JSON to ``benchmarks/results/paced_vs_baselines.json``; ``benchmarks/report.py`` renders it.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from common import mean_std, parser, pm, quick_or_full, table, write_run  # noqa: E402

from paced import config as C  # noqa: E402
from paced.demo import ensure_models  # noqa: E402
from paced.checkpoint import list_checkpoints  # noqa: E402
from paced.evaluate import evaluate  # noqa: E402
from paced.models import load_model_and_tokenizer  # noqa: E402
from paced.tasks import load_sources  # noqa: E402
from paced.train.distill import train as distill  # noqa: E402

# name -> (teacher: "teacher" | "self", [stage dicts]); a stage dict's max_steps is a share of steps
ARMS = {
    "fkl/uniform": ("teacher", [{"loss_type": "forward_kl", "weighting": "uniform"}]),
    "fkl/hard_filter": ("teacher", [{"loss_type": "forward_kl", "weighting": "hard_filter"}]),
    "fkl/paced": ("teacher", [{"loss_type": "forward_kl", "weighting": "beta"}]),
    "rkl/uniform": ("teacher", [{"loss_type": "reverse_kl", "weighting": "uniform"}]),
    "rkl/hard_filter": ("teacher", [{"loss_type": "reverse_kl", "weighting": "hard_filter"}]),
    "rkl/paced": ("teacher", [{"loss_type": "reverse_kl", "weighting": "beta"}]),
    "self-rkl/uniform": ("self", [{"loss_type": "reverse_kl", "weighting": "uniform"}]),
    "self-rkl/hard_filter": ("self", [{"loss_type": "reverse_kl", "weighting": "hard_filter"}]),
    "self-rkl/paced": ("self", [{"loss_type": "reverse_kl", "weighting": "beta"}]),
    "two-stage/paced": ("teacher", [{"loss_type": "forward_kl", "weighting": "beta", "share": 0.5},
                                    {"loss_type": "reverse_kl", "weighting": "beta", "share": 0.5}]),
}
LEARNABLE, UNLEARNABLE, PROBE = ("add", [1, 8]), ("mul1", [1, 8]), ("sub", [1, 8])
FKL_ARMS = [a for a in ARMS if a.startswith("fkl/")]


def source(spec, n, seed):
    return C.DataSource(source=spec[0], n=n, difficulty=spec[1], seed=seed)


def arm_config(arm: str, seed: int, share: float, a) -> C.DistillConfig:
    who, stages = ARMS[arm]
    stage_cfgs = []
    for i, st in enumerate(stages):
        steps = round(a.steps * st.get("share", 1.0))
        # stage 0 is named "start" in every arm so that the first p̂ estimate is shared
        stage_cfgs.append(C.StageCfg(name="start" if i == 0 else st["loss_type"], loss_type=st["loss_type"],
                                     max_steps=steps, weighting=st["weighting"],
                                     reestimate_every=0))
    teacher = (C.TeacherCfg(path="self", privileged=True) if who == "self"
               else C.TeacherCfg(path=str(Path(a.models) / "teacher" / "model")))
    n_bad = round(a.pool * share)
    pool = [source(LEARNABLE, a.pool - n_bad, 0)] + ([source(UNLEARNABLE, n_bad, 0)] if n_bad else [])
    tag = f"share{share:g}-seed{seed}"
    return C.DistillConfig(
        student=C.ModelCfg(path=str(Path(a.models) / "student" / "model")), teacher=teacher,
        data=C.DataCfg(train=pool, eval=[source(LEARNABLE, a.heldout, 100 + seed)],
                       forgetting=[source(PROBE, a.heldout, 100 + seed)]),
        distill=C.DistillCfg(stages=stage_cfgs, per_device_train_batch_size=a.batch, eval_n=8),
        sampling=C.SamplingCfg(max_completion_length=24, batch_size=512), passrate=C.PassrateCfg(num_generations=8),
        optim=C.OptimCfg(lr=a.lr, warmup_steps=20, lr_scheduler_type="constant"),
        ledger=C.LedgerCfg(path=str(Path(a.out_dir) / f"ledger-{tag}.sqlite"), model=f"student-{tag}"),
        run=C.TrainRunCfg(dir=str(Path(a.out_dir) / tag / arm.replace("/", "-")), seed=seed,
                          threads=a.threads, progress=False, logging_steps=10 ** 6, save_steps=a.eval_every,
                          save_total_limit=0))


def curve(run_dir: Path, examples, seed: int) -> list[tuple[int, float]]:
    """Held-out target mean@8 at every checkpoint of a finished arm."""
    out = []
    for ck in list_checkpoints(run_dir):
        model, tok = load_model_and_tokenizer(ck)
        r = evaluate(model, tok, examples, 8, [1], max_tokens=24, greedy=False, seed=seed)
        out.append((int(ck.name.split("-")[1]), r["overall"]["mean@n"]))
    return out


def main() -> None:
    ap = parser(__doc__, "1 seed, share 0.5 only, 120 steps, smaller pool", seeds=True)
    ap.add_argument("--models", default="runs/demo")
    ap.add_argument("--shares", type=float, nargs="+", help="unlearnable shares of the pool (default 0 .25 .5)")
    ap.add_argument("--rkl-share", type=float, help="the share at which the reverse-KL arms run")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out-dir", default="runs/bench-paced")
    ap.add_argument("--out", default="paced_vs_baselines.json", help="a file name in benchmarks/results/, or a path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, help="override the step budget per arm")
    ap.add_argument("--pool", type=int, help="override the pool size")
    ap.add_argument("--lr", type=float, default=1e-4,
                    help="1e-4: at 3e-4 even PACED wipes the probe (docs/methods.md, pilot settings: pick an lr at which it survives)")
    a = ap.parse_args()
    quick_or_full(a, seeds=([0], [0, 1, 2]), shares=([0.5], [0.0, 0.25, 0.5]), steps=(120, 300), pool=(400, 800),
                  heldout=(64, 128))
    a.rkl_share = a.rkl_share if a.rkl_share is not None else a.shares[len(a.shares) // 2]
    a.batch, a.eval_every = 32, max(1, a.steps // 6)
    torch.set_num_threads(a.threads)
    ensure_models(a.models)
    t0 = time.time()
    results: dict[str, list] = {}
    for seed in a.seeds:
        for share in a.shares:
            for arm in a.arms:
                if arm not in FKL_ARMS and share != a.rkl_share:
                    continue
                cfg = arm_config(arm, seed, share, a)
                summary = distill(cfg)
                target = load_sources(cfg.data.eval)
                key = f"{share:g}/{arm}"
                results.setdefault(key, []).append({"seed": seed, "after": summary["after"],
                                                    "before": summary["before"],
                                                    "curve": curve(Path(cfg.run.dir), target, seed)})
                s = summary["after"]
                print(f"seed {seed} share {share:g} {arm:<22} target mean@8 {s['target']['mean@n']:.3f} "
                      f"forgetting probe {s['forgetting']['mean@n']:.3f} ({time.time() - t0:.0f}s)", flush=True)
                write(a, results, t0, done=False)  # a kill keeps every finished arm
    print_table(write(a, results, t0, done=True), a)


def write(a, results: dict, t0: float, done: bool) -> dict:
    summary = summarise(results)
    meta = dict(seeds=a.seeds, shares=a.shares, rkl_share=a.rkl_share, steps=a.steps, pool=a.pool, heldout=a.heldout,
                batch=a.batch, lr=a.lr, threads=a.threads, models=a.models, learnable=LEARNABLE,
                unlearnable=UNLEARNABLE, probe=PROBE)
    write_run(a.out, a.quick, done, t0, meta, table=summary, runs=results)
    return summary


def summarise(results: dict) -> dict:
    out = {}
    for key, runs in results.items():
        share = key.split("/")[0]
        base = results.get(f"{share}/fkl/uniform")
        goal = statistics.mean(r["after"]["target"]["mean@n"] for r in base) if base else None
        reach = []
        for r in runs:
            hit = [step for step, acc in r["curve"] if goal is not None and acc >= goal]
            reach.append(hit[0] if hit else None)
        out[key] = {
            "target_mean8": mean_std([r["after"]["target"]["mean@n"] for r in runs]),
            "target_greedy": mean_std([r["after"]["target"]["greedy"] for r in runs]),
            "forgetting_drop": mean_std([r["before"]["forgetting"]["mean@n"] - r["after"]["forgetting"]["mean@n"]
                                         for r in runs]),
            "steps_to_uniform_final": reach,
            "before_target_mean8": runs[0]["before"]["target"]["mean@n"],
            "before_forgetting_mean8": runs[0]["before"]["forgetting"]["mean@n"],
        }
    return out


def print_table(summary: dict, a) -> None:
    print(*table(["share", "arm", "target mean@8", "target greedy", "forgetting drop", "steps to uniform's final"],
                 [[*key.split("/", 1), pm(r["target_mean8"]), pm(r["target_greedy"]), pm(r["forgetting_drop"]),
                   r["steps_to_uniform_final"]] for key, r in summary.items()]), sep="\n")
    first = next(iter(summary.values()))
    print(f"(student before: target mean@8 {first['before_target_mean8']:.3f}, probe mean@8 "
          f"{first['before_forgetting_mean8']:.3f}; seeds {a.seeds}; {a.steps} steps x {a.batch} problems, lr {a.lr})")


if __name__ == "__main__":
    main()
