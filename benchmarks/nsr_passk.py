"""Does the NSR paper's pass@k shape appear? GRPO, PPO, PSR, NSR, W-REINFORCE from one student.

    python benchmarks/nsr_passk.py --quick          # 1 seed, 40 steps, n = 64 (minutes)
    python benchmarks/nsr_passk.py                   # 3 seeds, 300 steps, n = 256 (docs/benchmarks.md's)

The student is the demo's SFT student (``--models``, default runs/demo; built with ``paced demo``
settings if missing): a tiny Llama that learned addition partly (and subtraction). Every arm
starts from it with the same rollout budget (steps x 32 prompts x 8 completions at T = 1 on a
pool of 2000 ``add`` problems), the same optimiser (AdamW, lr 1e-4, 20 warm-up steps, grad-norm
clip 1), token-mean loss (``dapo``), no KL, ε = 0.2. The base and every arm are then evaluated
on held-out addition problems (another seed) with n samples per problem, at the paper's
T = 0.6, top-p 0.95 and also at T = 1.0: the unbiased pass@k for k = 1, 2, 4, ..., n, mean ±
std over seeds, and the curves (``benchmarks/results/nsr_passk.png``). Training curves (reward,
entropy, held-out mean@8 every 50 steps) come from each run's metrics.jsonl.

The paper's shape (docs/methods.md §2): PSR raises pass@1 but lowers pass@k at large k; NSR keeps
pass@k at or above the base across k; W-REINFORCE gets both. The pilot (docs/methods.md, pilot settings) did not
see it at this scale; this benchmark reports what it measures either way.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std, parser, pm, quick_or_full, result_path, table, write_run  # noqa: E402
from paced import config as C  # noqa: E402
from paced.demo import ensure_models  # noqa: E402
from paced.evaluate import evaluate  # noqa: E402
from paced.models import load_model_and_tokenizer  # noqa: E402
from paced.runlog import read_jsonl  # noqa: E402
from paced.tasks import load_sources  # noqa: E402

ARMS = ["grpo", "ppo", "psr", "nsr", "w_reinforce"]
TEMPS = {"T0.6": (0.6, 0.95), "T1.0": (1.0, 1.0)}   # (temperature, top_p)


def rl_config(arm: str, seed: int, a) -> C.RLConfig:
    policy = str(Path(a.models) / "student" / "model")
    return C.load_config(C.RLConfig, None, [
        f"policy.path={policy}",
        f"data.train=[{{source: add, n: {a.pool}, difficulty: [1, 8], seed: 0}}]",
        f"data.eval=[{{source: add, n: {a.heldout}, difficulty: [1, 8], seed: 1}}]",
        f"rl.advantage={arm}", "rl.loss_type=dapo", "rl.num_generations=8",
        f"rl.per_device_train_batch_size={a.micro}", f"rl.gradient_accumulation_steps={256 // a.micro}",
        f"rl.max_steps={a.steps}", "sampling.max_completion_length=24", "rl.eval_n=8",
        f"rl.eval_steps={a.eval_every}", "run.logging_steps=1000000", "run.save_steps=0",
        f"optim.lr={a.lr}", "optim.warmup_steps=20", "optim.lr_scheduler_type=constant",
        "optim.max_grad_norm=1.0",
        f"run.dir={Path(a.out_dir) / f'{arm}-seed{seed}'}", f"run.seed={seed}", f"run.threads={a.threads}",
        "run.progress=false"])


def passk_eval(model_dir: Path, examples, a, seed: int) -> dict:
    model, tok = load_model_and_tokenizer(model_dir)
    out = {}
    for name, (t, top_p) in TEMPS.items():
        r = evaluate(model, tok, examples, a.n, None, temperature=t, top_p=top_p, max_tokens=24,
                     greedy=(name == "T1.0"), batch_size=1024, seed=1000 + seed)
        out[name] = {k: v for k, v in r["overall"].items() if k != "problems"}
    return out


def main() -> None:
    ap = parser(__doc__, "1 seed, 40 steps, n = 64, 64 held-out problems", seeds=True)
    ap.add_argument("--models", default="runs/demo")
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--n", type=int, help="samples per held-out problem (default 256)")
    ap.add_argument("--heldout", type=int)
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--micro", type=int, default=128, help="completions per micro-batch (256 per step)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default="runs/bench-nsr")
    ap.add_argument("--out", default=None, help="a file name in benchmarks/results/ or a path "
                    "(default nsr_passk.json, --quick nsr_passk_quick.json)")
    a = ap.parse_args()
    quick_or_full(a, seeds=([0], [0, 1, 2]), steps=(40, 300), n=(64, 256), heldout=(64, 128),
                  out=("nsr_passk_quick.json", "nsr_passk.json"))
    a.out = result_path(a.out)
    ensure_models(a.models)
    from paced.train.rl import train

    t0 = time.time()
    examples = load_sources([C.DataSource(source="add", n=a.heldout, difficulty=[1, 8], seed=1)])
    prev = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    same = prev.get("meta", {}).get("settings") == settings(a)
    results = prev.get("runs", {}) if same else {}
    if "base" not in results:
        results["base"] = [passk_eval(Path(a.models) / "student" / "model", examples, a, s) for s in a.seeds]
        write(a, results, t0, False)
    for seed in a.seeds:
        for arm in a.arms:
            if len(results.get(arm, [])) > a.seeds.index(seed):
                continue  # done in an earlier (killed) run with the same settings
            cfg = rl_config(arm, seed, a)
            tic = time.time()
            train(cfg)
            rows = read_jsonl(Path(cfg.run.dir) / "metrics.jsonl")
            run = {"seed": seed, "eval": passk_eval(Path(cfg.run.dir) / "model", examples, a, seed),
                   "minutes": round((time.time() - tic) / 60, 2),
                   "curve": [{k: r.get(k) for k in ("step", "reward", "entropy", "eval/mean@n",
                                                     "eval/pass@1", "frac_reward_zero_std")}
                             for r in rows if r["step"] % 10 == 0 or "eval/mean@n" in r]}
            results.setdefault(arm, []).append(run)
            write(a, results, t0, False)  # a kill keeps every finished arm
            print(f"{arm} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in run["eval"]["T0.6"].items()
                                                       if v is not None))
    res = write(a, results, t0, True)
    print_tables(res)
    plot(res, Path(a.out).with_suffix(".png"))


def settings(a) -> dict:
    return {k: getattr(a, k) for k in ("models", "steps", "n", "heldout", "pool", "lr", "micro")}


def summarise(results: dict) -> dict:
    out = {}
    for arm, runs in results.items():
        evals = [r["eval"] if arm != "base" else r for r in runs]
        out[arm] = {t: {k: mean_std([e[t][k] for e in evals]) for k in evals[0][t] if evals[0][t][k] is not None}
                    for t in TEMPS}
    return out


def write(a, results: dict, t0: float, done: bool) -> dict:
    summary = summarise(results)
    write_run(a.out, a.quick, done, t0, dict(seeds=a.seeds, arms=a.arms, settings=settings(a), threads=a.threads),
              table=summary, runs=results)
    return {"table": summary}


def print_tables(res: dict) -> None:
    for t in TEMPS:
        ks = [k for k in next(iter(res["table"].values()))[t] if k.startswith("pass@")]
        ks = [k for k in ks if int(k[5:]) in (1, 4, 16, 64, 256) or k == ks[-1]]
        print(f"\n{t}:", *table(["arm", *ks, "mean@n"], [[arm, *(pm(r[t][k]) for k in ks + ["mean@n"])]
                                                          for arm, r in res["table"].items()]), sep="\n")


def plot(res: dict, path: Path) -> None:
    from paced.analysis.plots import passk_curves
    table = res["table"]
    for t in TEMPS:
        curves = {arm: {int(k[5:]): v[0] for k, v in r[t].items() if k.startswith("pass@")} for arm, r in table.items()}
        errors = {arm: {int(k[5:]): v[1] for k, v in r[t].items() if k.startswith("pass@")} for arm, r in table.items()}
        passk_curves(curves, path.with_name(f"{path.stem}_{t}.png"), title=f"held-out add, {t}", errors=errors)


if __name__ == "__main__":
    main()
