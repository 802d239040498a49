"""Frontier prompt selection in rl at an equal rollout budget: the DAPO baseline (GRPO + dynamic
sampling) against skip, allocate, adaptive and the frontier rule (paced/train/frontier.py), from one
student and pool.

    python benchmarks/frontier_rl.py --quick     # 1 seed, 12k rollouts a run (minutes on 2 cores)
    python benchmarks/frontier_rl.py             # 3 seeds, 40k rollouts a run (docs/benchmarks.md's table)
    python benchmarks/guide_student.py && python benchmarks/frontier_rl.py --student runs/guide/student/model \
        --out-dir runs/bench-frontier-guide --out frontier_rl_guide_student.json \
        --set 'frontier:rl.guide.hint_template={hint:_<16}|{prompt}'    # the same from a hint-reading student

The student (built if missing, cached under --out-dir): the tiny preset, SFT on ``add`` at
difficulty 1-4 (20000 problems, batch 64, lr 2e-3 after 50 warm-up steps, constant) for
``--student-steps`` (1500) steps. The pool is ``add`` at difficulty 1-6, so short sums are solved
already (p̂ = 1), six-digit ones, never seen in SFT, mostly not at all (p̂ = 0), and the middle
is where RL can move; the script prints the pool's p̂ histogram (``--k`` samples a problem, T = 1)
before training. Every arm: GRPO advantages (group-scaled), token-mean loss (dapo), no KL,
AdamW ``--lr``, 32 prompts x 8 completions a uniform step at T = 1, at most 16 new tokens, and
the same budget of sampled completions, ``rl.max_rollouts`` (all rounds counted):
    dapo       prompt_selection uniform, dynamic_sampling (at most ``--rounds`` rounds a step)
    grpo       prompt_selection uniform, no dynamic sampling: a control with allocate's 256 rollouts and
               one update a step (DAPO drops zero-variance groups and refills: fewer updates a rollout)
    skip       prompt_selection skip on top of that (threshold 0.5, re-admit 0.1): GRESO-style
    allocate   prompt_selection allocate: 256 rollouts a step over 128 candidates, groups of 2..16
    adaptive   prompt_selection adaptive: rounds of 4 until both outcomes or 16 rollouts
    frontier   the frontier rule (configs/rl/frontier.yaml's): on dynamic sampling as skip, likely
               all-pass prompts skipped, likely all-fail ones straight to Guide's hinted rollouts
               (the pool's problems with hint_level 3: "starts" + the answer's leading digits; Guide's
               default hint template), the rest trained. The student never saw a hint in SFT.
--real: the built-in SmolLM2-135M-Instruct as the student (no SFT) on natural-language ``add`` of
difficulty 1-2 (``answer_format: last_number`` with its instruction, configs/real/rl_grpo.yaml's
pool, where about a third of the problems sit at p̂ = 0 for this model and few at 1), 8 prompts x
4 completions a uniform step at T = 0.7, at most 48 new tokens, lr 2e-6, ``REAL_BUDGET`` rollouts
a run (a 135M model is ~25 s a step on 2 cores), 32 held-out problems before and after, the arms
of ``REAL_ARMS`` with settings scaled to the 32-rollout step (allocate: 32 over 16 candidates,
groups of 2..8; adaptive: rounds of 2 up to 8); frontier is left out (the pool has no hints this
model reads). So few steps move held-out accuracy by noise only: what this run measures is how
each rule spends a real model's rollouts (the zero-variance and informative shares), not the
accuracy it reaches (frontier_rl_real.json).
p̂ is the ledger's: this run's rollouts, ledger.recency exponential with a half-life of 10 steps for
skip and allocate (adaptive reads none), the uniform prior for untried prompts. These settings
(128 candidates, the half-life, adaptive's cap 16 rather than 32) were chosen on seed 9, which
the table does not report (there allocate reached the target at 0.57x, adaptive at 0.62x).

Measured per arm and seed: held-out (``add`` 1-6, seed 1, ``--heldout`` problems) pass@1 and
pass@8 from 8 samples at T = 1, before, every ``eval_steps`` and after training (the curve, on
rollouts and generated tokens); the rollouts and tokens at the first evaluation where pass@1
reaches the DAPO baseline's final pass@1 (mean over seeds), as a share of the baseline's; the
share of rollouts spent on zero-variance groups (rewards all equal: no gradient), the share of
informative groups, prompts skipped, and wall time.
"""
from __future__ import annotations

import collections
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std, parser, pm, quick_or_full, result_path, table, write_run  # noqa: E402

from paced import config as C  # noqa: E402
from paced.runlog import read_jsonl  # noqa: E402

RECENT = ["ledger.recency=exponential", "ledger.half_life=10"]   # p̂ from the last ~10 steps mostly
ARMS = {"dapo": ["rl.dynamic_sampling=true"],
        "grpo": [],   # the control: uniform, nothing dropped (as many updates per rollout as allocate)
        "skip": ["rl.dynamic_sampling=true", "rl.prompt_selection=skip", "rl.skip_threshold=0.5",
                 "rl.skip_readmit=0.1", *RECENT],
        "allocate": ["rl.prompt_selection=allocate", "rl.allocate_prompts=128", "rl.min_group=2",
                     "rl.max_group=16", *RECENT],
        "adaptive": ["rl.prompt_selection=adaptive", "rl.adaptive_round=4", "rl.adaptive_cap=16"],
        "frontier": ["rl.dynamic_sampling=true", "rl.prompt_selection=frontier", "rl.skip_threshold=0.5",
                     "rl.skip_readmit=0.1", "rl.guide.enabled=true", *RECENT]}
HINTED = {"frontier": 3}   # the arms whose pool carries hints (the same problems: hints are extra fields)
CURVE = ("step", "rollouts_total", "rollouts", "rollout_tokens", "rollouts_zero_variance", "informative_group_share",
         "prompts_skipped", "groups", "reward", "eval/pass@1", "eval/pass@8")
BASELINE = "dapo"
REAL_BUDGET = 320
REAL_ARMS = {"dapo": [], "grpo": [], "skip": [],
             "allocate": ["rl.allocate_prompts=16", "rl.min_group=2", "rl.max_group=8"],
             "adaptive": ["rl.adaptive_round=2", "rl.adaptive_cap=8"]}   # after ARMS' (later overrides win)
REAL_SOURCE = ("{{source: add, style: natural, n: {n}, difficulty: [1, 2], seed: {seed}, answer_format: last_number, "
               "prompt_template: '{{prompt}} {{instruction}}'}}")


def ensure_student(out_dir: Path, steps: int, threads: int) -> str:
    """The SFT student (module docstring) in ``out_dir/model`` unless it is there already."""
    if not (out_dir / "model" / "config.json").is_file():
        from paced.train.sft import train as sft
        sft(C.SFTConfig(model=C.ModelCfg(preset="tiny", init_seed=0),
                        data=C.DataCfg(train=[C.DataSource(source="add", n=20000, difficulty=[1, 4], seed=0)]),
                        optim=C.OptimCfg(lr=2e-3, warmup_steps=50, lr_scheduler_type="constant"),
                        train=C.TrainCfg(max_steps=steps, per_device_train_batch_size=64),
                        run=C.TrainRunCfg(dir=str(out_dir), seed=0, threads=threads, progress=False,
                                          logging_steps=10 ** 6, save_steps=0)))
    return str(out_dir / "model")


def source(seed: int, n: int, hint_level: int = 0, real: bool = False) -> str:
    if real:
        return REAL_SOURCE.format(n=n, seed=seed)
    return f"{{source: add, n: {n}, difficulty: [1, 6], seed: {seed}, hint_level: {hint_level}}}"


def real_overrides(a) -> list[str]:
    """--real: the settings of the module docstring, on top of rl_config's."""
    return ["rl.num_generations=4", "rl.per_device_train_batch_size=16", "rl.gradient_accumulation_steps=2",
            "rl.eval_steps=0", "sampling.max_completion_length=48", "sampling.temperature=0.7",
            "sampling.batch_size=128", "optim.warmup_steps=0"] if a.real else []


def rl_config(arm: str, seed: int, a) -> C.RLConfig:
    return C.load_config(C.RLConfig, None, [
        f"policy.path={a.student}", f"data.train=[{source(0, a.pool, HINTED.get(arm, 0), a.real)}]",
        f"data.eval=[{source(1, a.heldout, real=a.real)}]",
        "rl.advantage=grpo", "rl.loss_type=dapo", "rl.num_generations=8", f"rl.max_sampling_rounds={a.rounds}",
        "rl.per_device_train_batch_size=128", "rl.gradient_accumulation_steps=2", "rl.max_steps=100000",
        f"rl.max_rollouts={a.budget}", "rl.eval_n=8", f"rl.eval_steps={a.eval_steps}",
        "sampling.max_completion_length=16", "run.logging_steps=1000000", "run.save_steps=0", f"optim.lr={a.lr}",
        "optim.warmup_steps=5", "optim.lr_scheduler_type=constant", "optim.max_grad_norm=1.0",
        f"run.dir={Path(a.out_dir) / f'{arm}-seed{seed}'}", f"run.seed={seed}", f"run.threads={a.threads}",
        "run.progress=false", *real_overrides(a), *overrides(arm, a)])


def overrides(arm: str, a) -> list[str]:
    """The arm's own settings: ARMS and the --set ones."""
    return [*ARMS[arm], *(REAL_ARMS[arm] if a.real else []),
            *[o.split(":", 1)[1] for o in a.set if o.split(":", 1)[0] == arm]]


def histogram(model_dir: str, a) -> dict:
    """The pool's p̂ from ``a.k`` samples a problem: shares at 0, in (0, 1) and at 1, per difficulty."""
    from paced.evaluate import evaluate
    from paced.models import load_model_and_tokenizer
    from paced.tasks import load_sources
    from paced.rundir import load_model
    model, tok, _ = load_model(model_dir, None, 0, "float32", Path(a.out_dir)) if a.real else \
        (*load_model_and_tokenizer(model_dir), None)
    pool = load_sources(C.load_config(C.DataCfg, None, [f"train=[{source(0, a.pool, real=a.real)}]"]).train)
    res = evaluate(model, tok, pool, a.k, [1], temperature=0.7 if a.real else 1.0, max_tokens=48 if a.real else 16,
                   greedy=False, batch_size=128 if a.real else 1024, seed=12345)
    by, level = collections.defaultdict(list), {e.id: e.difficulty for e in pool}
    for p in res["problems"]:
        by[level[p["id"]]].append(p["c"])
    rows = {d: {"problems": len(cs), "p0": sum(c == 0 for c in cs) / len(cs), "p1": sum(c == a.k for c in cs) / len(cs),
                "mean": sum(cs) / (a.k * len(cs))} for d, cs in sorted(by.items())}
    cs = [c for v in by.values() for c in v]
    rows["all"] = {"problems": len(cs), "p0": sum(c == 0 for c in cs) / len(cs),
                   "p1": sum(c == a.k for c in cs) / len(cs), "mean": sum(cs) / (a.k * len(cs))}
    return {"k": a.k, "by_difficulty": rows}


def curve_of(rows: list[dict], before: dict, after: dict) -> list[dict]:
    """(rollouts, tokens, pass@1, pass@8) at every evaluation: before (0), during, after."""
    pts, tokens = [{"rollouts": 0, "tokens": 0, "pass@1": before["eval/pass@1"], "pass@8": before["eval/pass@8"]}], 0
    for r in rows:
        tokens += r["rollout_tokens"]
        if "eval/pass@1" in r:
            pts.append({"rollouts": r["rollouts_total"], "tokens": tokens, "pass@1": r["eval/pass@1"],
                        "pass@8": r["eval/pass@8"]})
    pts.append({"rollouts": rows[-1]["rollouts_total"], "tokens": tokens, "pass@1": after["eval/pass@1"],
                "pass@8": after["eval/pass@8"]})
    return pts


def reach(curve: list[dict], target: float) -> dict | None:
    """The first evaluation point whose pass@1 is at least ``target`` (None: never)."""
    return next((p for p in curve if p["pass@1"] >= target), None)


def main() -> None:
    ap = parser(__doc__, "1 seed, 12k rollouts a run, 128 held-out problems", seeds=True)
    ap.add_argument("--student", default=None, help="a model directory (default: build it in --out-dir/student)")
    ap.add_argument("--student-steps", type=int, default=1500)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))   # dapo first: the target
    ap.add_argument("--budget", type=int, help="sampled completions per run (default 40000; quick 12000)")
    ap.add_argument("--pool", type=int, help="pool problems (default 512; --real 64)")
    ap.add_argument("--heldout", type=int, help="held-out problems (default 256; quick 128)")
    ap.add_argument("--k", type=int, help="samples a pool problem for the p-hat histogram (default 16; --real 8)")
    ap.add_argument("--rounds", type=int, default=3, help="dynamic sampling: rollout rounds a step at most")
    ap.add_argument("--eval-steps", type=int, default=5)
    ap.add_argument("--lr", type=float, help="learning rate (default 2e-4; --real 2e-6)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], metavar="ARM:KEY=VALUE",
                    help="an extra override of one arm (e.g. allocate:rl.allocate_prompts=128; recorded in the JSON)")
    ap.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct on natural-language sums "
                    "(module docstring): how each rule spends a real model's rollouts")
    ap.add_argument("--out-dir", help="runs and the student (default runs/bench-frontier; --real runs/bench-frontier-real)")
    ap.add_argument("--out", default=None, help="a file name in benchmarks/results/ or a path "
                    "(default frontier_rl.json, --quick frontier_rl_quick.json)")
    a = ap.parse_args()
    if a.real:   # the module docstring's --real settings, where not given
        a.student = a.student or "smollm2-135m-instruct"
        a.arms = [arm for arm in a.arms if arm in REAL_ARMS]
        quick_or_full(a, budget=(REAL_BUDGET, REAL_BUDGET), heldout=(32, 32), pool=(64, 64), k=(8, 8),
                      lr=(2e-6, 2e-6), out_dir=("runs/bench-frontier-real",) * 2,
                      out=("frontier_rl_real_quick.json", "frontier_rl_real.json"))
    quick_or_full(a, seeds=([0], [0, 1, 2]), budget=(12000, 40000), heldout=(128, 256), pool=(512, 512),
                  k=(16, 16), lr=(2e-4, 2e-4), out_dir=("runs/bench-frontier",) * 2,
                  out=("frontier_rl_quick.json", "frontier_rl.json"))
    a.out = result_path(a.out)
    import torch
    torch.set_num_threads(a.threads)
    t0 = time.time()
    a.student = a.student or ensure_student(Path(a.out_dir) / "student", a.student_steps, a.threads)
    from paced.train.rl import train

    hist = histogram(a.student, a)
    h = hist["by_difficulty"]
    print(*table(["difficulty", "problems", "p̂ = 0", "p̂ = 1", f"mean@{a.k}"],
                 [[d, r["problems"], f"{r['p0']:.3f}", f"{r['p1']:.3f}", f"{r['mean']:.3f}"] for d, r in h.items()]),
          sep="\n")
    prev = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    runs = prev.get("runs", {}) if prev.get("meta", {}).get("settings") == settings(a) else {}
    for seed in a.seeds:
        for arm in a.arms:
            if any(r["seed"] == seed and r["overrides"] == overrides(arm, a) for r in runs.get(arm, [])):
                continue   # finished in an earlier (killed) invocation with the same settings
            runs[arm] = [r for r in runs.get(arm, []) if r["seed"] != seed]
            cfg = rl_config(arm, seed, a)
            shutil.rmtree(cfg.run.dir, ignore_errors=True)   # a fresh run (its ledger too)
            tic = time.time()
            summary = train(cfg)
            rows = read_jsonl(Path(cfg.run.dir) / "metrics.jsonl")
            spent = sum(r["rollouts"] for r in rows)
            run = {"seed": seed, "threads": a.threads, "overrides": overrides(arm, a), "steps": summary["steps"], "rollouts": rows[-1]["rollouts_total"],
                   "tokens": sum(r["rollout_tokens"] for r in rows), "minutes": round((time.time() - tic) / 60, 2),
                   "zero_variance_share": sum(r["rollouts_zero_variance"] for r in rows) / spent,
                   "informative_group_share": _informative(rows),
                   "prompts_skipped": sum(r.get("prompts_skipped", 0) for r in rows),
                   "before": summary["before"], "after": summary["after"],
                   "curve": curve_of(rows, summary["before"], summary["after"]),
                   "steps_log": [{k: r[k] for k in CURVE if k in r} for r in rows]}
            runs.setdefault(arm, []).append(run)
            write(a, hist, runs, t0, False)
            print(f"{arm} seed {seed}: {run['steps']} steps, {run['rollouts']} rollouts, pass@1 "
                  f"{run['before']['eval/pass@1']:.3f} -> {run['after']['eval/pass@1']:.3f}, zero-variance "
                  f"{run['zero_variance_share']:.3f}, {run['minutes']} min")
    print_table(write(a, hist, runs, t0, True))


def _informative(rows: list[dict]) -> float:
    """The run's informative-group share: the mean over steps of each step's share (groups whose
    rewards vary / groups rolled, dynamic sampling's dropped ones included)."""
    shares = [x for r in rows if (x := r["informative_group_share"]) == x]   # NaN: a step without groups
    return sum(shares) / max(len(shares), 1)


def settings(a) -> dict:
    keys = ("student_steps", "budget", "pool", "heldout", "k", "rounds", "eval_steps", "lr", "real")
    return {k: getattr(a, k) for k in keys}   # each run records its arm's own (``overrides``)


def summarise(runs: dict) -> dict:
    base = runs.get(BASELINE, [])
    target = sum(r["after"]["eval/pass@1"] for r in base) / len(base) if base else float("nan")
    b_roll = sum(r["rollouts"] for r in base) / len(base) if base else float("nan")
    b_tok = sum(r["tokens"] for r in base) / len(base) if base else float("nan")
    out = {"target_pass@1": target}
    for arm, rs in sorted(runs.items(), key=lambda x: list(ARMS).index(x[0])):
        hits = [reach(r["curve"], target) for r in rs]
        got = [h for h in hits if h is not None]
        out[arm] = {"pass@1": mean_std([r["after"]["eval/pass@1"] for r in rs]),
                    "pass@8": mean_std([r["after"]["eval/pass@8"] for r in rs]),
                    "before_pass@1": mean_std([r["before"]["eval/pass@1"] for r in rs]),
                    "rollouts": mean_std([r["rollouts"] for r in rs]), "steps": mean_std([r["steps"] for r in rs]),
                    "zero_variance_share": mean_std([r["zero_variance_share"] for r in rs]),
                    "informative_group_share": mean_std([r["informative_group_share"] for r in rs]),
                    "prompts_skipped": mean_std([r["prompts_skipped"] for r in rs]),
                    "minutes": mean_std([r["minutes"] for r in rs]),
                    "reached": f"{len(got)}/{len(rs)}",
                    "rollouts_to_target": mean_std([h["rollouts"] / b_roll for h in got]) if got else None,
                    "tokens_to_target": mean_std([h["tokens"] / b_tok for h in got]) if got else None}
    return out


def write(a, hist: dict, runs: dict, t0: float, done: bool) -> dict:
    summary = summarise(runs)
    write_run(a.out, a.quick, done, t0, dict(seeds=a.seeds, arms=a.arms, settings=settings(a), threads=a.threads),
              indent=None, table=summary, histogram=hist, runs=runs)
    return {"table": summary, "histogram": hist}


def print_table(res: dict) -> None:
    t = res["table"]
    print(f"target: the {BASELINE} baseline's final held-out pass@1 {t['target_pass@1']:.3f}")
    print(*table(["arm", "rollouts", "steps", "pass@1", "pass@8", "rollouts to target (x dapo)",
                  "tokens to target", "zero-variance rollouts", "informative groups", "minutes"],
                 [[arm, f"{r['rollouts'][0]:.0f}", f"{r['steps'][0]:.0f}", pm(r["pass@1"]), pm(r["pass@8"]),
                   (pm(r["rollouts_to_target"], 2) if r["rollouts_to_target"] else "never") + f" ({r['reached']})",
                   pm(r["tokens_to_target"], 2) if r["tokens_to_target"] else "never",
                   pm(r["zero_variance_share"]), pm(r["informative_group_share"]), pm(r["minutes"], 1)]
                  for arm, r in t.items() if arm != "target_pass@1"]), sep="\n")


if __name__ == "__main__":
    main()
