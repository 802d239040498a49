"""The student's p̂ during distillation, and the held-out scores around it: how p̂ is sampled
(``PassRater``), each stage's p̂ and PACED weights w (from the ledger, or fresh rollouts;
``online_passrate`` adds the verified responses a stage samples anyway), the held-out mean@n /
greedy before and after. Used by the loop in paced/train/distill.py; numbers and tensors in, no
config sections.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..evaluate import evaluate
from ..ledger import Ledger
from ..passrate import estimate, estimate_sequential
from ..posterior import SETTLED
from ..rollout import SamplingParams
from ..runlog import console, write_json
from ..weighting import problem_weights, weight_of


@dataclass
class PassRater:
    """How the student's p̂ is estimated: K rollouts per problem at ``temperature`` (top_p, top_k),
    or, ``adaptive``, rounds of ``round_size`` until the weight is settled or ``max_generations``
    (``passrate.estimate_sequential``, tolerances ``weight_tol``, ``zero_tol``)."""
    model: torch.nn.Module
    tok: object
    k: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int
    batch_size: int
    system: str
    backend: str
    long_prompts: str
    adaptive: bool = False
    round_size: int = 2
    max_generations: int = 16
    weight_tol: float = 0.2
    zero_tol: float = 0.4


# StageCfg.shrink_by: the key of an example that groups the pool for ``weight_estimator: shrunk``'s prior
SHRINK_BY = {"pool": lambda e: 0, "source": lambda e: e.source, "difficulty": lambda e: e.difficulty,
             "source_difficulty": lambda e: (e.source, e.difficulty)}


def group_labels(pool: list, by: str) -> np.ndarray:
    """(n,) integer labels of ``SHRINK_BY[by]`` over the pool's examples, in order of first
    appearance (a missing difficulty is a group of its own)."""
    ids: dict = {}
    return np.array([ids.setdefault(SHRINK_BY[by](e), len(ids)) for e in pool], dtype=np.int64)


def fresh_counts(pr: PassRater, ledger: Ledger, tag: str, name: str, examples: list, weighting: str, alpha: float,
                 beta: float, step: int) -> dict[str, tuple[int, int]]:
    """{id: (successes, trials)} of the student's own rollouts on ``examples``, recorded under
    stage ``name`` at ``step`` (the sampling seed follows ``step``): K each, or, ``pr.adaptive``,
    the sequential estimate under the weighting's stopping rule (``posterior.SETTLED``). The
    ledger's rows at that step are passed as recorded, so a killed estimate resumes exactly and a
    finished one samples nothing again."""
    recorded = ledger.counts(model=tag, stage=name, step=step)
    params = SamplingParams(temperature=pr.temperature, top_p=pr.top_p, top_k=pr.top_k, max_tokens=pr.max_tokens,
                            seed=pr.seed * 7919 + step)
    common = dict(step=step, batch_size=pr.batch_size, system_prompt=pr.system, backend=pr.backend,
                  long_prompts=pr.long_prompts, recorded=recorded)
    if pr.adaptive:  # re-entered on resume too: it samples only the rounds the ledger lacks
        rule = partial(SETTLED[weighting], cap=pr.max_generations, alpha=alpha, beta=beta, tol=pr.weight_tol,
                       zero_tol=pr.zero_tol)
        return estimate_sequential(pr.model, pr.tok, examples, ledger, rule, pr.round_size, pr.max_generations,
                                   params, tag, name, **common)
    if all(e.id in recorded for e in examples):
        return recorded                                        # estimated before (a resumed run)
    return estimate(pr.model, pr.tok, examples, ledger, pr.k, params, tag, name, **common)


def stage_weights(pr: PassRater, ledger: Ledger, tag: str, name: str, pool: list, weighting: str, alpha: float,
                  beta: float, estimator: str, online: bool, at: int, start: int, known=None, groups=None):
    """p̂ and w for every pool problem, estimated at global step ``at`` (reused if the ledger has
    it: a resumed run samples nothing again); ``online``: the stage-start estimate plus the
    verified responses of steps ≤ at. Weighting uniform uses no p̂: nothing is sampled, p̂ is NaN.
    ``known(now=, exclude=)``: the ledger's discounted counts (``lineage.read_counts``; stage
    passrate_source ledger), read without this estimate's own rows: only problems with less than
    one trial of evidence are sampled.
    ``pr.adaptive``: the sequential estimate under the weighting's stopping rule
    (``posterior.SETTLED``), trials unequal; w is then the plug-in w(c / k) of each problem's own
    k: it keeps w = 0 exact where every rollout agreed (those problems are never forwarded);
    docs/benchmarks.md compares it with posterior means of w (adaptive_passrate).
    ``groups`` ((n,) labels, ``group_labels``): estimator shrunk fits one prior per group."""
    if weighting == "uniform":
        return np.full(len(pool), np.nan), np.ones(len(pool))
    if known is not None:
        return known_weights(pr, ledger, tag, name, pool, weighting, alpha, beta, at,
                             *known(now=at, exclude=(name, at)))
    base = start if online else at
    counts = fresh_counts(pr, ledger, tag, name, pool, weighting, alpha, beta, base)
    if pr.adaptive:
        spent = sum(k for _, k in counts.values())
        console.print(f"adaptive p̂ at step {base}: {spent} rollouts for {len(pool)} problems ({spent / len(pool):.1f} "
                      f"each, cap {pr.max_generations}; K = {pr.k} fixed: {pr.k * len(pool)})")
    extra = ledger.counts(model=tag, stage=f"{name}:online", before_step=at + 1) if online else {}
    c = np.array([counts[e.id][0] + extra.get(e.id, (0, 0))[0] for e in pool])
    k = np.array([counts[e.id][1] + extra.get(e.id, (0, 0))[1] for e in pool])
    return c / k, problem_weights(c, k, weighting, alpha, beta, estimator, groups)


def known_weights(pr: PassRater, ledger: Ledger, tag: str, name: str, pool: list, weighting: str, alpha: float,
                  beta: float, at: int, c_eff, k_eff):
    """p̂ = c / k and plug-in w from the ledger's discounted counts (c_eff, k_eff) (n,), plus fresh
    rollouts (recorded under ``name`` at step ``at``) for the problems with k_eff < 1: K each, or
    ``pr.adaptive``, the sequential estimate under the weighting's rule."""
    c, k = np.asarray(c_eff, dtype=float).copy(), np.asarray(k_eff, dtype=float).copy()
    todo, spent = [i for i in range(len(pool)) if k[i] < 1], 0
    if todo:
        sub = [pool[i] for i in todo]
        fresh = fresh_counts(pr, ledger, tag, name, sub, weighting, alpha, beta, at)
        for i, e in zip(todo, sub):
            c[i], k[i] = c[i] + fresh[e.id][0], k[i] + fresh[e.id][1]
            spent += fresh[e.id][1]
    console.print(f"p̂ from the ledger for {len(pool) - len(todo)} of {len(pool)} problems; "
                  f"{spent} fresh rollouts for the rest")
    p_hat = c / k
    return p_hat, weight_of(p_hat, weighting, alpha, beta)


def held_out_eval(pr: PassRater, held_out: dict[str, list], n: int, when: str) -> dict:
    """mean@n and greedy accuracy of the student on each held-out set (target, forgetting probe),
    sampled as its p̂ is; printed and returned."""
    out = {}
    for name, exs in held_out.items():
        if exs:
            r = evaluate(pr.model, pr.tok, exs, n, [1], temperature=pr.temperature, top_p=pr.top_p, top_k=pr.top_k,
                         max_tokens=pr.max_tokens,
                         greedy=True, seed=pr.seed, system_prompt=pr.system, backend=pr.backend,
                         long_prompts=pr.long_prompts)
            out[name] = {"mean@n": r["overall"]["mean@n"], "greedy": r["overall"]["greedy"]}
    console.print(f"{when}: " + ", ".join(f"{k} mean@{n} {v['mean@n']:.3f} greedy {v['greedy']:.3f}"
                                          for k, v in out.items()))
    return out


def eval_before(pr: PassRater, held_out: dict[str, list], n: int, run_dir: Path, resumed: bool, save: bool) -> dict:
    """The held-out scores before training: measured by the first run (before.json), else now."""
    if resumed and (run_dir / "before.json").exists():
        return json.loads((run_dir / "before.json").read_text())
    before = held_out_eval(pr, held_out, n, "before")
    if save:
        write_json(run_dir / "before.json", before)
    return before


def held_out_change(before: dict, after: dict) -> dict:
    """forgetting_drop (before − after on the probe) and target_gain (after − before), or None."""
    return {"forgetting_drop": ({k: before["forgetting"][k] - after["forgetting"][k] for k in after["forgetting"]}
                                if "forgetting" in after else None),
            "target_gain": ({k: after["target"][k] - before["target"][k] for k in after["target"]}
                            if "target" in after else None)}
