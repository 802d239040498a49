"""Adaptive pass-rate estimation: rollouts spent against weight error, fixed K vs sequential.

    python benchmarks/adaptive_passrate.py --quick     # 3 seeds, 160 problems, K_ref = 256 (2 minutes)
    python benchmarks/adaptive_passrate.py             # 5 seeds, 480 problems, K_ref = 512 (docs/benchmarks.md's)

The student is the demo's (a 0.14M-parameter Llama, SFT on addition and subtraction of difficulty
1-8 with the demo's settings, 1,000 steps), trained here once (about 15 minutes on 2 busy cores,
cached in --out-dir) unless ``--student`` names a model directory; shorter SFT runs left its pass
rates almost all below 1/8 (--sft-steps, --hi: other students). The pool: the first problems of
its training sources (half add, half sub), as the demo's pass-rate step. A reference estimate with K_ref rollouts per
problem gives w_ref = w(c / K_ref) for the Beta kernel p(1 - p) and the hard filter 1{0 < c < K_ref}.
Contenders, each on its own rollouts (seeds differ per contender and per benchmark seed):
    fixed K in {2, 4, 8, 16}    ``paced.passrate.estimate``
    sequential, hard filter      ``estimate_sequential`` with the hard filter's rule, caps 8 and 16
    sequential, Beta kernel      the Beta rule (posterior sd of w <= tol x max w, or posterior mean
                                <= zero_tol x max w, cap 32): zero_tol = 2 tol for tol in 0.25 .. 0.1
                                (one curve), tol 0.15 without the w ~ 0 rule, the shipped defaults;
                                and the same curve under the pool's empirical-Bayes prior refitted
                                each round (``eb_rule``: benchmark only)
Per contender: rollouts per problem; the hard filter's share of keep / drop decisions that differ
from the reference's; mean |w - w_ref| / max w of four estimates of w from the same counts: the
plug-in w(c / k) (what training uses), the posterior mean under the uniform prior, the posterior
mean under the pool's empirical-Bayes Beta prior (``posterior.fit_prior`` on the contender's own
counts), and the unbiased c (k - c) / (k (k - 1)). The headline: the rollouts per problem at which
a curve (linear in log-log between its points) meets fixed K = 8's plug-in error, over 8 (the
issue's goal: <= 0.5), for the sequential plug-in, the sequential EB mean and fixed K with the EB
mean; the hard filter's sequential version at cap 8 against K = 8 (the same decision errors by
construction). Beside it, an oracle bound: the rollouts an allocation knowing each problem's
reference p would need to match K = 8's expected plug-in error (exact binomial sums; the
Lagrangian allocation). The reference's counts are cached in --out-dir.
--real: the built-in SmolLM2-135M-Instruct on natural-language ``add`` and ``mul1`` problems of difficulty 1-2
(half each, ``answer_format: last_number`` with its instruction, as configs/real/passrate.yaml; where
this model's p̂ spreads over (0, 1)), T = 0.7, at most 48 new tokens, 32 problems, K_ref = 64, and
the contenders of ``REAL`` (fewer: a 135M model samples ~200 tokens/s here): 2 seeds (--quick 1),
about 25 minutes on 2 cores (adaptive_passrate_real.json).
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std, parser, pm, quick_or_full, result_path, table, write_run  # noqa: E402

FIXED = (2, 4, 8, 16)
HARD_CAPS = (8, 16)
# (tol, zero_tol), cap BETA_CAP: one family, zero_tol = 2 tol (the headline's curve), and tol 0.15
# without the w ≈ 0 rule (what that rule buys)
BETA = ((0.25, 0.5), (0.2, 0.4), (0.15, 0.3), (0.1, 0.2), (0.15, 0.0))
BETA_CAP, ROUND = 32, 2
# --real runs these contenders only (the headline's curves need fixed K and the Beta family)
REAL = ("fixed K=2", "fixed K=4", "fixed K=8", "fixed K=16", "seq hard cap=8", "seq beta tol=0.25 zero=0.5",
        "seq beta tol=0.2 zero=0.4", "seq beta tol=0.15 zero=0.3")


def student(a) -> str:
    """The demo's student (--student, or SFT here with the demo's settings, cached in --out-dir)."""
    if a.student:
        return a.student
    from paced import config as C
    from paced.train.sft import train
    run = Path(a.out_dir) / f"student-{a.sft_steps}-d{a.hi}"
    if not (run / "model" / "config.json").exists():
        print(f"training the student ({a.sft_steps} SFT steps, minutes) in {run}", flush=True)
        train(C.load_config(C.SFTConfig, None, [
            "model.preset=tiny", "model.init_seed=0",
            f"data.train=[{{source: add, n: 20000, difficulty: [1, {a.hi}], seed: 0}}, "
            f"{{source: sub, n: 20000, difficulty: [1, {a.hi}], seed: 0}}]",
            f"train.max_steps={a.sft_steps}", "train.per_device_train_batch_size=64", "optim.lr=2e-3",
            "optim.warmup_steps=50", f"run.threads={a.threads}", "run.save_steps=0", "run.progress=false",
            "run.logging_steps=1000000"], run_dir=run))
    return str(run / "model")


def kernel(c, k):
    """Plug-in p(1 - p) of counts, (n,)."""
    p = c / k
    return p * (1 - p)


def errors(c, k, c_ref, k_ref, groups) -> dict:
    """Mean |ŵ − w_ref| / max w of counts (c, k) against the reference's, for ŵ the plug-in, the
    unbiased estimate (where every k ≥ 2), the posterior mean under the uniform prior, under
    the pool's empirical-Bayes prior (``weight_estimator: shrunk``, ``posterior.fit_prior`` on
    these counts) and under one such prior per (source, difficulty) group (``groups``, (n,)
    labels; ``shrink_by: source_difficulty``); and the hard filter's wrong-decision share."""
    from paced.posterior import beta_params, weight_mean_sd
    from paced.weighting import problem_weights
    w_ref = kernel(c_ref, k_ref)
    post, _ = weight_mean_sd(*beta_params(c, k), 1.0, 1.0)
    eb = problem_weights(c, k, "beta", 1.0, 1.0, "shrunk")
    eb_by = problem_weights(c, k, "beta", 1.0, 1.0, "shrunk", groups)
    unbiased = c * (k - c) / (k * np.maximum(k - 1, 1))
    keep, keep_ref = (c > 0) & (c < k), (c_ref > 0) & (c_ref < k_ref)
    err = lambda w: float(np.abs(w - w_ref).mean() / 0.25)  # noqa: E731
    return {"rollouts": float(k.mean()), "err_plugin": err(kernel(c, k)),
            "err_unbiased": err(unbiased) if k.min() >= 2 else None, "err_posterior": err(post),
            "err_eb": err(eb), "err_eb_by": err(eb_by), "hard_wrong": float((keep != keep_ref).mean())}


def oracle_rollouts(p_ref, n_max: int = 64) -> tuple[float, float]:
    """(K = 8's expected plug-in error, the rollouts per problem an allocation knowing each p
    needs for that error): the expected error of w(c/n) with c ~ Binomial(n, p) by exact sums,
    E_i(n) (n ≤ ``n_max``); the allocation n_i = argmin_n E_i(n) + λ n (Lagrangian: the lower
    convex hull of the error-budget curve), at the smallest mean n over a grid of λ that reaches
    the target."""
    def err(p, n):
        c = np.arange(n + 1)
        pmf = np.array([math.comb(n, x) * p ** x * (1 - p) ** (n - x) for x in c])      # 0 ** 0 = 1
        return float((pmf * np.abs(kernel(c, n) - p * (1 - p))).sum() / 0.25)
    E = np.array([[err(p, n) for n in range(1, n_max + 1)] for p in p_ref])          # (N, n_max)
    target, ns, best = E[:, 7].mean(), np.arange(1, n_max + 1), float(n_max)
    for lam in np.geomspace(1e-7, 1.0, 400):
        pick = (E + lam * ns[None, :]).argmin(1)                                       # (N,)
        if E[np.arange(len(p_ref)), pick].mean() <= target:
            best = min(best, float(ns[pick].mean()))
    return float(target), best


def crossing(points: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """The rollouts at which a curve of (rollouts, error) points meets ``target``: linear in
    log-log between the two neighbouring points (sorted by rollouts) that bracket it ("="); the
    fewest rollouts if every point is at or below it ("<="); None if none reaches it."""
    pts = sorted(points)
    if pts[0][1] <= target:
        return pts[0][0], "<="
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if (e0 - target) * (e1 - target) <= 0 and e0 != e1:
            t = (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))), "="
    return None, "none"


def eb_rule(c, k, cap: int, alpha: float, beta: float, tol: float, zero_tol: float) -> np.ndarray:
    """The Beta rule under the pool's empirical-Bayes prior, refitted to all counts at each
    round (not in paced: a resumed run would refit on counts from later rounds)."""
    from paced.posterior import beta_params, fit_prior, settled_kernel, settled_zero
    a, b = beta_params(c, k, *fit_prior(c, k))
    return settled_kernel(a, b, k, alpha, beta, tol, cap) | settled_zero(a, b, alpha, beta, zero_tol)


def contenders() -> dict:
    """name -> (kind, settings): every estimator the benchmark runs."""
    out = {f"fixed K={K}": ("fixed", {"k": K}) for K in FIXED}
    out |= {f"seq hard cap={cap}": ("hard_filter", {"cap": cap}) for cap in HARD_CAPS}
    out |= {f"seq beta tol={t} zero={z}": ("beta", {"cap": BETA_CAP, "tol": t, "zero_tol": z}) for t, z in BETA}
    out |= {f"seq beta EB tol={t} zero={z}": ("beta_eb", {"cap": BETA_CAP, "tol": t, "zero_tol": z})
            for t, z in BETA if z}
    from paced.config import PassrateCfg
    d = PassrateCfg()      # the shipped defaults, as passrate.adaptive=true runs them
    out[f"seq beta defaults (cap {d.max_generations}, tol {d.weight_tol}, zero {d.zero_tol})"] = (
        "beta", {"cap": d.max_generations, "tol": d.weight_tol, "zero_tol": d.zero_tol, "round": d.round_size})
    return out


def run_one(model, tok, pool, kind: str, s: dict, seed: int, a, ledger_dir: Path):
    """Counts (c, k) of one contender, (n,) each."""
    from paced.ledger import Ledger
    from paced.passrate import estimate, estimate_sequential
    from paced.posterior import SETTLED
    from paced.rollout import SamplingParams
    params = SamplingParams(temperature=a.temperature, max_tokens=a.max_tokens, seed=seed)
    ledger = Ledger(ledger_dir / f"{seed}.sqlite")
    common = dict(batch_size=a.batch_size, system_prompt=a.system_prompt)
    if kind == "fixed":
        out = estimate(model, tok, pool, ledger, s["k"], params, "m", "s", **common)
    else:
        rule = partial(SETTLED[kind] if kind != "beta_eb" else eb_rule, cap=s["cap"], alpha=1.0, beta=1.0,
                       tol=s.get("tol", 0.0), zero_tol=s.get("zero_tol", 0.0))
        out = estimate_sequential(model, tok, pool, ledger, rule, s.get("round", ROUND), s["cap"], params, "m", "s",
                                  **common)
    return np.array([out[e.id][0] for e in pool]), np.array([out[e.id][1] for e in pool])


def summarise(runs: dict, ref: dict) -> dict:
    """Per contender: mean ± std over seeds of every metric; the headline ratios."""
    tab = {}
    for name, per_seed in runs.items():
        tab[name] = {m: (mean_std([r[m] for r in per_seed]) if per_seed[0][m] is not None else None)
                     for m in per_seed[0]}
    k8, hard = tab["fixed K=8"], tab["seq hard cap=8"]
    target = k8["err_plugin"][0]
    family = [v for n, v in tab.items() if n.startswith("seq beta tol=") and not n.endswith("zero=0.0")]
    fixed = [v for n, v in tab.items() if n.startswith("fixed")]
    curves = {"sequential, plug-in": [(v["rollouts"][0], v["err_plugin"][0]) for v in family],
              "sequential, EB posterior mean": [(v["rollouts"][0], v["err_eb"][0]) for v in family],
              "fixed K, EB posterior mean": [(v["rollouts"][0], v["err_eb"][0]) for v in fixed],
              "sequential, EB mean by source x difficulty": [(v["rollouts"][0], v["err_eb_by"][0]) for v in family],
              "fixed K, EB mean by source x difficulty": [(v["rollouts"][0], v["err_eb_by"][0]) for v in fixed],
              "sequential with the EB rule, EB posterior mean": [(v["rollouts"][0], v["err_eb"][0])
                                                                  for n, v in tab.items() if n.startswith("seq beta EB")]}
    meets = {}
    for name, pts in curves.items():
        if not pts:
            continue
        n, how = crossing(pts, target)
        meets[name] = {"rollouts": n, "how": how, "ratio": None if n is None else n / 8}
    return {"table": tab, "headline": {
        "beta_k8_error": target, "meets_k8": meets,
        "hard_k8_wrong": k8["hard_wrong"][0], "hard_cap8_wrong": hard["hard_wrong"][0],
        "hard_ratio": hard["rollouts"][0] / 8, "oracle_rollouts_at_k8_error": ref.get("oracle"),
        "oracle_ratio": None if ref.get("oracle") is None else ref["oracle"] / 8}}


def meets_text(m: dict) -> str:
    """"5.41 (0.68)", "<= 4.00 (<= 0.50)" or "not reached" for one entry of ``meets_k8``."""
    if m["rollouts"] is None:
        return "not reached"
    pre = "≤ " if m["how"] == "<=" else ""
    return f"{pre}{m['rollouts']:.2f} ({pre}{m['ratio']:.2f})"


def print_tables(res: dict, ref: dict) -> None:
    h = res["headline"]
    print(f"\nreference: K_ref = {ref['k']} on {ref['problems']} problems; p_ref = 0: {ref['at_zero']}, "
          f"= 1: {ref['at_one']}, inside: {ref['inside']}; histogram {ref['histogram']}")
    print(*table(HEAD, rows(res["table"])), sep="\n")
    print(f"\nBeta kernel: K = 8's plug-in error {h['beta_k8_error']:.3f}; rollouts per problem (ratio to 8) "
          "at which it is met: " + "; ".join(f"{n} {meets_text(m)}" for n, m in h["meets_k8"].items())
          + f"; an oracle allocation (plug-in, p_ref known) {h['oracle_rollouts_at_k8_error']:.2f} "
          f"({h['oracle_ratio']:.2f}), for K = 8's expected error {ref['k8_expected_error']:.3f}")
    print(f"hard filter: cap 8 spends {h['hard_ratio']:.2f} of K = 8's rollouts; wrong decisions "
          f"{h['hard_cap8_wrong']:.3f} vs {h['hard_k8_wrong']:.3f}")


HEAD = ["estimator", "rollouts / problem", "plug-in", "posterior mean", "EB posterior mean",
        "EB by source x difficulty", "unbiased", "hard filter wrong"]


def rows(tab: dict) -> list[list[str]]:
    """The table's rows (report.py prints the same)."""
    return [[n, pm(v["rollouts"], 2), pm(v["err_plugin"]), pm(v["err_posterior"]), pm(v["err_eb"]),
             pm(v["err_eb_by"]) if v.get("err_eb_by") else "–",
             pm(v["err_unbiased"]) if v["err_unbiased"] else "–", pm(v["hard_wrong"])] for n, v in tab.items()]


def reference(model, tok, pool, a) -> tuple[np.ndarray, np.ndarray]:
    """The K_ref counts, cached in --out-dir under the settings they depend on."""
    import hashlib
    import json
    key = hashlib.sha1(json.dumps([str(a.student_path), [e.id for e in pool], a.k_ref, a.max_tokens,
                                   a.batch_size] + ([a.temperature] if a.temperature != 1.0 else [])
                                  ).encode()).hexdigest()[:12]
    path = Path(a.out_dir) / f"reference-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        c = np.array(json.loads(path.read_text())["c"])
        return c, np.full(len(c), a.k_ref)
    with tempfile.TemporaryDirectory() as tmp:
        c, k = run_one(model, tok, pool, "fixed", {"k": a.k_ref}, 999_983, a, Path(tmp))
    path.write_text(json.dumps({"c": c.tolist(), "k_ref": a.k_ref}))
    return c, k


def main() -> None:
    ap = parser(__doc__, "3 seeds, 160 problems, K_ref = 256 (the same student)",
                seeds=True)
    ap.add_argument("--student", default=None, help="a model directory (default: train the demo's student)")
    ap.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct, 24 natural problems, K_ref = 64")
    ap.add_argument("--problems", type=int)
    ap.add_argument("--k-ref", type=int)
    ap.add_argument("--sft-steps", type=int)
    ap.add_argument("--hi", type=int, help="highest difficulty of the student's data and the pool (default 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, help="sequences per sampler call (default 1024; --real 256)")
    ap.add_argument("--out-dir", default="runs/bench-adaptive")
    ap.add_argument("--out", default=None, help="a file name in benchmarks/results/ or a path")
    a = ap.parse_args()
    if a.real:   # the module docstring's --real settings, where not given
        quick_or_full(a, seeds=([0], [0, 1]), problems=(32, 32), k_ref=(64, 64), batch_size=(256, 256),
                      out=("adaptive_passrate_real_quick.json", "adaptive_passrate_real.json"))
    quick_or_full(a, seeds=([0, 1, 2], [0, 1, 2, 3, 4]), problems=(160, 480), k_ref=(256, 512),
                  sft_steps=(1000, 1000), hi=(8, 8), batch_size=(1024, 1024),
                  out=("adaptive_passrate_quick.json", "adaptive_passrate.json"))
    a.max_tokens, a.system_prompt, a.temperature = 24, "default", 1.0
    sources, extra = ("add", "sub"), ", style: compact"
    if a.real:
        a.student, a.max_tokens, a.temperature, a.hi, sources = "smollm2-135m-instruct", 48, 0.7, 2, ("add", "mul1")
        extra = ", style: natural, answer_format: last_number, prompt_template: '{prompt} {instruction}'"
    import torch

    from paced import config as C
    from paced.rundir import load_model
    from paced.tasks import load_sources
    torch.set_num_threads(a.threads)
    t0 = time.time()
    a.student_path = student(a)
    model, tok, _ = load_model(a.student_path, None, 0, "float32", Path(a.out_dir))
    half = a.problems // 2
    pool = load_sources(C.load_config(C.DataCfg, None, [
        f"train=[{{source: {sources[0]}, n: {half}, difficulty: [1, {a.hi}], seed: 0{extra}}}, "
        f"{{source: {sources[1]}, n: {a.problems - half}, difficulty: [1, {a.hi}], seed: 0{extra}}}]"]).train)
    settings = {"problems": len(pool), "k_ref": a.k_ref, "sft_steps": None if a.student else a.sft_steps,
                "difficulty": [1, a.hi],
                "student": a.student or "demo student (trained here)", "round_size": ROUND, "beta_cap": BETA_CAP,
                "max_tokens": a.max_tokens, "temperature": a.temperature, "sources": list(sources)}
    from paced.train.passrates import group_labels
    groups = group_labels(pool, "source_difficulty")
    tic = time.time()
    c_ref, k_ref = reference(model, tok, pool, a)
    p_ref = c_ref / k_ref
    print(f"reference: {time.time() - tic:.0f} s; p_ref histogram "
          f"{np.histogram(p_ref, bins=8, range=(0, 1))[0].tolist()}", flush=True)
    ref = {"k": a.k_ref, "problems": len(pool), "at_zero": int((c_ref == 0).sum()),
           "at_one": int((c_ref == k_ref).sum()), "inside": int(((c_ref > 0) & (c_ref < k_ref)).sum()),
           "histogram": np.histogram(p_ref, bins=8, range=(0, 1))[0].tolist(), "mean_p": float(p_ref.mean()),
           "successes": c_ref.tolist()}
    ref["k8_expected_error"], ref["oracle"] = oracle_rollouts(p_ref)
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, list] = {}
        for i, seed in enumerate(a.seeds):
            for j, (name, (kind, s)) in enumerate(contenders().items()):
                if a.real and name not in REAL:
                    continue
                tic = time.time()
                c, k = run_one(model, tok, pool, kind, s, 10 ** 6 * (seed + 1) + 10 ** 4 * j, a, Path(tmp))
                runs.setdefault(name, []).append(errors(c, k, c_ref, k_ref, groups) | {"seconds": time.time() - tic})
                print(f"seed {seed} {name}: " + ", ".join(f"{m} {v:.3f}" for m, v in runs[name][-1].items()
                                                          if v is not None), flush=True)
            done = {n: [{m: v for m, v in r.items() if m != "seconds"} for r in rs] for n, rs in runs.items()}
            res = summarise(done, ref)   # written after every seed: a stopped run keeps the seeds it finished
            write_run(result_path(a.out), a.quick, i == len(a.seeds) - 1, t0,
                      dict(seeds=a.seeds[: i + 1], settings=settings, threads=a.threads), reference=ref, **res,
                      runs=done)
    print_tables(res, ref)


if __name__ == "__main__":
    main()
