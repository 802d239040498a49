"""Guide-GRPO vs GRPO at the same rollout budget (hinted rollouts count), from a hint-literate student.

    python benchmarks/guide_vs_grpo.py --quick       # 1 seed, 20k rollouts a run (minutes)
    python benchmarks/guide_vs_grpo.py               # 5 seeds, 150k rollouts a run (docs/benchmarks.md's table)

The student is benchmarks/guide_student.py's (built if missing): the demo student's SFT recipe
with hinted extra copies in the template ``{hint:_<16}|{prompt}``, stopped mid-way through
learning addition — the demo's own student cannot read a hint in its prompt (hinted accuracy
0). The training pool is ``add`` at ``--difficulty`` with synthetic hints of ``--hint-level``,
where many prompts start with every sample wrong. Both arms: GRPO advantages, dynamic sampling
(groups all-right or all-wrong dropped, up to ``--rounds`` rollout rounds a step), token-mean
loss, no KL, AdamW ``--lr``, 32 prompts x 8 completions a step at T = 1, and the same budget of
sampled completions (``rl.max_rollouts``; Guide's hinted rollouts count).

Measured, per arm and seed:
- U = the training prompts whose ``--u-samples`` (32) plain samples all fail before training
  (base model, seed 0). ``U solved``: the share of U with a correct plain sample among 32 after
  training (seed 777). The control row is the *base* model measured the same way: the share of
  U that a fresh draw alone solves — the level to subtract.
- held-out ``add`` (seed 1, same difficulty): pass@1 and pass@n (n samples, seed 1001), and
  `paced analyze`'s split of Δpass@1 against the base's counts (seed 1000) into compression and
  capability gain (paced/analysis/compression.py); the control row gives the split that chance alone makes.
- the training curve: rollouts so far vs ``all_fail_now_solved`` (prompts that once failed all
  8 rollouts and whose latest plain rollouts solved them), reward, guided groups, γ.
Before training it measures the hint check docs/methods.md (pilot settings) describes: on U, the share whose 8
*hinted* samples are mixed (a usable Guide group).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std, parser, pm, quick_or_full, result_path, table, write_run  # noqa: E402
from guide_student import TEMPLATE, ensure_hint_student  # noqa: E402

from paced import config as C  # noqa: E402
from paced.analysis.compression import analyze  # noqa: E402
from paced.evaluate import evaluate  # noqa: E402
from paced.guide import hint_prompt  # noqa: E402
from paced.models import load_model_and_tokenizer  # noqa: E402
from paced.runlog import read_jsonl  # noqa: E402
from paced.tasks import load_sources  # noqa: E402

ARMS = {"grpo": [], "guide": ["rl.guide.enabled=true"],
        "guide_unshaped": ["rl.guide.enabled=true", "rl.guide.shaping=none"]}   # the last: an ablation
CURVE = ("step", "rollouts_total", "reward", "all_fail_prompts", "all_fail_now_solved",
         "guide/guided_groups", "guide/solved_with_hint", "guide/gamma", "guide/log_ratio")


def pool_source(a, seed: int, n: int) -> dict:
    return {"source": "add", "n": n, "difficulty": a.difficulty, "seed": seed, "hint_level": a.hint_level}


def rl_config(arm: str, seed: int, a) -> C.RLConfig:
    p = pool_source(a, 0, a.pool)
    return C.load_config(C.RLConfig, None, [
        f"policy.path={a.student}", "data.eval=[]",
        f"data.train=[{{source: add, n: {p['n']}, difficulty: {p['difficulty']}, seed: 0, "
        f"hint_level: {p['hint_level']}}}]",
        "rl.advantage=grpo", "rl.loss_type=dapo", "rl.num_generations=8", "rl.dynamic_sampling=true",
        f"rl.max_sampling_rounds={a.rounds}", "rl.per_device_train_batch_size=128",
        "rl.gradient_accumulation_steps=2", "rl.max_steps=100000", f"rl.max_rollouts={a.budget}",
        "sampling.max_completion_length=24", f"rl.guide.hint_template={json.dumps(TEMPLATE)}", "run.logging_steps=1000000",
        "run.save_steps=0", f"optim.lr={a.lr}", "optim.warmup_steps=10", "optim.lr_scheduler_type=constant",
        "optim.max_grad_norm=1.0", f"run.dir={Path(a.out_dir) / f'{arm}-seed{seed}'}", f"run.seed={seed}",
        f"run.threads={a.threads}", "run.progress=false", *ARMS[arm]])


def counts(model, tok, examples, n: int, seed: int) -> dict[str, tuple[int, int]]:
    res = evaluate(model, tok, examples, n, [1], temperature=1.0, max_tokens=24, greedy=False,
                   batch_size=1024, seed=seed)
    return {p["id"]: (p["c"], n) for p in res["problems"]}


def measure(model_dir, a, pool_u, heldout, before_heldout) -> dict:
    """After training (or the base model again: the control), with seeds the "before" counts did
    not use: the share of U solved (a correct plain sample among u_samples), held-out pass@1 /
    pass@n and the split of held-out Δpass@1 against ``before_heldout``."""
    model, tok = load_model_and_tokenizer(str(model_dir))
    u = counts(model, tok, pool_u, a.u_samples, 777)
    h = counts(model, tok, heldout, a.n, 1001)
    split = analyze(before_heldout, h, a.n)["overall"]
    return {"U_solved": sum(c > 0 for c, _ in u.values()) / max(len(u), 1),
            "heldout_pass@1": sum(c for c, _ in h.values()) / (a.n * len(h)),
            f"heldout_pass@{a.n}": sum(c > 0 for c, _ in h.values()) / len(h),
            "split": split, "heldout_counts": h}


def main() -> None:
    ap = parser(__doc__, "1 seed, budget 20k rollouts, 64 held-out problems", seeds=True)
    ap.add_argument("--student", default="runs/guide/student/model")
    ap.add_argument("--student-steps", type=int, default=500,
                    help="SFT steps of guide_student.py's recipe when --student must be built (fewer: weaker)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), help="default: all; quick: grpo guide")
    ap.add_argument("--budget", type=int, help="sampled completions per run (default 150000; quick 20000)")
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--difficulty", type=int, nargs=2, default=[7, 8])
    ap.add_argument("--hint-level", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="dynamic sampling: rollout rounds a step at most")
    ap.add_argument("--heldout", type=int, help="held-out problems (default 256; quick 64)")
    ap.add_argument("--n", type=int, default=16, help="samples per held-out problem")
    ap.add_argument("--u-samples", type=int, default=32,
                    help="plain samples per training prompt that define U (all fail) and 'U solved' after")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default="runs/bench-guide")
    ap.add_argument("--out", default=None, help="a file name in benchmarks/results/ or a path "
                    "(default guide_vs_grpo.json, --quick guide_vs_grpo_quick.json)")
    a = ap.parse_args()
    quick_or_full(a, seeds=([0], [0, 1, 2, 3, 4]), arms=(["grpo", "guide"], list(ARMS)), budget=(20000, 150000),
                  heldout=(64, 256), out=("guide_vs_grpo_quick.json", "guide_vs_grpo.json"))
    a.out = result_path(a.out)
    import torch
    torch.set_num_threads(a.threads)
    t0 = time.time()
    if not (Path(a.student) / "config.json").is_file():
        ensure_hint_student(Path(a.student).parent, steps=a.student_steps, threads=a.threads)
    from paced.train.rl import train

    pool = load_sources([C.DataSource(**pool_source(a, 0, a.pool))])
    heldout = load_sources([C.DataSource(**pool_source(a, 1, a.heldout))])
    prev = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    same = prev.get("meta", {}).get("settings") == settings(a)
    base = prev.get("base") if same else None
    if base is None:
        model, tok = load_model_and_tokenizer(a.student)
        before = counts(model, tok, pool, a.u_samples, 0)
        u_ids = sorted(i for i, (c, _) in before.items() if c == 0)
        u = [e for e in pool if e.id in set(u_ids)]
        hinted = [dataclasses.replace(e, prompt=hint_prompt(TEMPLATE, e.prompt, e.hint)) for e in u]
        hc = counts(model, tok, hinted, 8, 0)
        base = {"U": u_ids, "U_share": len(u_ids) / len(pool),
                "pool_pass@1": sum(c for c, _ in before.values()) / (a.u_samples * len(pool)),
                "hint_check": {"U_hinted_mean@8": sum(c for c, _ in hc.values()) / (8 * max(len(hc), 1)),
                               "U_hinted_mixed": sum(0 < c < 8 for c, _ in hc.values()) / max(len(hc), 1),
                               "U_hinted_any": sum(c > 0 for c, _ in hc.values()) / max(len(hc), 1)},
                "heldout_before": counts(model, tok, heldout, a.n, 1000)}
        # the control: the base model measured like a trained one (fresh seeds): what chance alone gives
        base["eval"] = measure(a.student, a, u, heldout, {k: tuple(v) for k, v in base["heldout_before"].items()})
        print(f"pool: {len(pool)} prompts, U (pass@8 = 0) {base['U_share']:.3f}; hint check on U: "
              + ", ".join(f"{k} {v:.3f}" for k, v in base["hint_check"].items()))
    u = [e for e in pool if e.id in set(base["U"])]
    before_heldout = {k: tuple(v) for k, v in base["heldout_before"].items()}
    runs = prev.get("runs", {}) if same else {}
    write(a, base, runs, t0, False)
    for seed in a.seeds:
        for arm in a.arms:
            if any(r["seed"] == seed for r in runs.get(arm, [])):
                continue   # finished in an earlier (killed) run with the same settings
            cfg = rl_config(arm, seed, a)
            tic = time.time()
            summary = train(cfg)
            rows = read_jsonl(Path(cfg.run.dir) / "metrics.jsonl")
            run = {"seed": seed, "steps": summary["steps"], "rollouts": rows[-1]["rollouts_total"],
                   "minutes": round((time.time() - tic) / 60, 2),
                   "eval": measure(Path(cfg.run.dir) / "model", a, u, heldout, before_heldout),
                   "curve": [{k: r.get(k) for k in CURVE if k in r} for r in rows]}
            runs.setdefault(arm, []).append(run)
            write(a, base, runs, t0, False)   # a kill keeps every finished run
            e = run["eval"]
            print(f"{arm} seed {seed}: {run['steps']} steps, {run['rollouts']} rollouts, U solved "
                  f"{e['U_solved']:.3f}, held-out pass@1 {e['heldout_pass@1']:.3f}, {run['minutes']} min")
    print_table(write(a, base, runs, t0, True))


def settings(a) -> dict:
    keys = ("student", "student_steps", "budget", "pool", "difficulty", "hint_level", "rounds", "heldout", "n",
            "u_samples", "lr")
    return {k: getattr(a, k) for k in keys} | {"template": TEMPLATE}


def solved_share_at(curve: list[dict], rollouts: float) -> float:
    """From a training curve: all_fail_now_solved / all_fail_prompts at the last step within
    ``rollouts`` sampled completions (the equal-rollout comparison)."""
    rows = [r for r in curve if r["rollouts_total"] <= rollouts] or curve[:1]
    return rows[-1]["all_fail_now_solved"] / max(rows[-1]["all_fail_prompts"], 1)


FRACTIONS = (0.25, 0.5, 1.0)   # of the budget: points of the equal-rollout curve in the table


def solved_share_at_step(curve: list[dict], step: int) -> float:
    rows = [r for r in curve if r["step"] <= step] or curve[:1]
    return rows[-1]["all_fail_now_solved"] / max(rows[-1]["all_fail_prompts"], 1)


def summarise(base: dict, runs: dict, n: int, budget: int) -> dict:
    out = {}
    for arm, rs in {"base (control)": [{"eval": base["eval"], "steps": 0, "rollouts": 0}], **runs}.items():
        ev = [r["eval"] for r in rs]
        out[arm] = {k: mean_std([e[k] for e in ev]) for k in ("U_solved", "heldout_pass@1", f"heldout_pass@{n}")}
        out[arm] |= {"steps": mean_std([r["steps"] for r in rs]), "rollouts": mean_std([r["rollouts"] for r in rs])}
        if arm != "base (control)":
            for f in FRACTIONS:
                out[arm][f"train_solved@{f}"] = mean_std([solved_share_at(r["curve"], f * budget) for r in rs])
            out[arm]["equal_step"] = min(r["steps"] for rs_ in runs.values() for r in rs_)
            out[arm]["train_solved@equal_step"] = mean_std([solved_share_at_step(r["curve"], out[arm]["equal_step"])
                                                               for r in rs])
            out[arm]["collapsed"] = sum(e["heldout_pass@1"] < 0.5 * base["eval"]["heldout_pass@1"] for e in ev)
        for cls in ("compression", "capability_gain"):
            out[arm][f"{cls}_delta"] = mean_std([e["split"]["classes"][cls]["delta_pass@1"] for e in ev])
            out[arm][f"{cls}_count"] = mean_std([e["split"]["classes"][cls]["count"] for e in ev])
    return out


def write(a, base: dict, runs: dict, t0: float, done: bool) -> dict:
    summary = summarise(base, runs, a.n, a.budget)
    write_run(a.out, a.quick, done, t0, dict(seeds=a.seeds, arms=a.arms, settings=settings(a), threads=a.threads),
              indent=None, table=summary, base=base, runs=runs)   # ~15 runs of per-step curves: one line
    return {"table": summary, "settings": settings(a)}


def print_table(res: dict) -> None:
    n = res["settings"]["n"]
    print(*table(["arm", "rollouts", "steps", "U solved", "held-out pass@1", f"pass@{n}", "Δpass@1 compression",
                  "capability gain"],
                 [[arm, f"{r['rollouts'][0]:.0f}", f"{r['steps'][0]:.0f}", pm(r["U_solved"]), pm(r["heldout_pass@1"]),
                   pm(r[f"heldout_pass@{n}"]), pm(r["compression_delta"]), pm(r["capability_gain_delta"])]
                  for arm, r in res["table"].items()]), sep="\n")


if __name__ == "__main__":
    main()
