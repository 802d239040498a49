"""Frontier prompt selection in ``paced rl`` (docs/methods.md §5): which prompts a step rolls
out and how many rollouts each gets, read from the posterior of their pass rates
(paced/posterior.py) that the ledger's discounted counts give (paced/train/lineage.py).

``rl.prompt_selection`` (``Selection``):
    uniform      the next prompts of the seeded per-epoch stream, num_generations rollouts each
    hard_filter  prompts drawn ∝ w(p̂) = 1{0 < p̂ < 1} (p̂ = c / k of the discounted counts; untried: 1/2)
    beta         prompts drawn ∝ w(p̂) = p̂^α (1 − p̂)^β
    skip         the uniform stream, minus the prompts whose next group of num_generations would
                 all agree with posterior probability ≥ skip_threshold (each such prompt re-admitted
                 with probability skip_readmit); drawn on until the step's prompts are admitted
                 (GRESO, arXiv 2506.02177). With Guide only P(all succeed) counts: an all-fail
                 group is what Guide re-rolls with a hint
    allocate     allocate_prompts candidates of the uniform stream share rollout_budget rollouts per
                 process, 0 or min_group..max_group each, by the exact knapsack of posterior.allocate
                 (Knapsack-RL, arXiv 2509.25849): groups of unequal size
    adaptive     the uniform stream's prompts, rollouts in rounds of adaptive_round until a prompt
                 has a success and a failure or adaptive_cap rollouts (Reinforce-Ada, arXiv
                 2510.04996); the whole group is trained on: groups of unequal size
    frontier     each prompt routed by its posterior (needs Guide): likely all-pass -> skipped; likely
                 all-fail with a hint -> straight to Guide's hinted rollouts (no plain group is paid
                 for), without a hint -> skipped; the rest -> trained as usual. "Likely" is
                 P ≥ skip_threshold; every skipped or hint-routed prompt is rolled out plain with
                 probability skip_readmit instead, so its p̂ keeps being re-checked
skip, allocate and frontier read the posterior Beta(1 + c_eff, 1 + k_eff − c_eff): an untried prompt has
p ~ U(0, 1); hard_filter and beta keep their plug-in p̂ (as before this module); adaptive reads none.
Every draw is a pure function of (run.seed, step, round, stream position), so resume is exact.

Deviations: GRESO keeps a per-prompt history of zero-variance groups and tunes its skip
probability online; here the risk is the closed-form P(all agree) of the discounted posterior and
the re-admission probability is fixed. Knapsack-RL allocates one global budget over the whole
batch; here each process solves its own knapsack over its own candidates (its rows, hence DDP's
work, stay equal across processes). Reinforce-Ada subsamples a fixed-size, balanced group from the
rollouts it collected; here every rollout a prompt received is trained on (none of the paid
rollouts is thrown away; unequal groups are handled by rl_losses.ragged_advantages, and each row
counts once in the loss normalisers: see rl_losses.py above LOSS_TYPES). allocate and adaptive
make groups not of num_generations rows, so the config refuses them with Guide's replacement (a
group of num_generations) and with dynamic sampling (they decide the rollouts per prompt themselves).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..ledger import Ledger, tally
from ..posterior import allocate, beta_params, moment, settled_hard_filter, skip_mask, zero_variance_prob
from ..rl_losses import ragged_has_variance
from .batches import batch_indices
from .rollouts import Collected, Roller, collect_groups, pick_prompts, prompt_weights, record_round, roll_sized

Selection = Literal["uniform", "hard_filter", "beta", "skip", "allocate", "adaptive", "frontier"]   # RLCfg.prompt_selection


@dataclass(frozen=True)
class SelectSpec:
    """The numbers of ``rl.*`` prompt selection reads (``SelectSpec.of(cfg.rl, local)``); ``local``
    the groups a uniform step gives one process, ``budget`` / ``candidates`` / ``max_group``
    resolved from their 0 = auto defaults."""
    rule: Selection
    G: int
    local: int
    guide: bool
    dynamic: bool
    max_rounds: int
    alpha: float
    beta: float
    skip_threshold: float
    skip_readmit: float
    budget: int
    candidates: int
    min_group: int
    max_group: int
    round: int
    cap: int

    @classmethod
    def of(cls, r, local: int) -> SelectSpec:
        G = r.num_generations
        return cls(r.prompt_selection, G, local, r.guide.enabled, r.dynamic_sampling, r.max_sampling_rounds,
                   r.weight_alpha, r.weight_beta, r.skip_threshold, r.skip_readmit, r.rollout_budget or local * G,
                   r.allocate_prompts or 2 * local, r.min_group, r.max_group or 2 * G, r.adaptive_round,
                   r.adaptive_cap)


def posterior(c_eff, k_eff):
    """(a, b) (n,) each: Beta(1 + c, 1 + k − c), the uniform prior for untried prompts."""
    return beta_params(c_eff, k_eff, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# skip: the uniform stream, with the prompts at high zero-variance risk left out
# ---------------------------------------------------------------------------------------------
def skip_draw(n_pool: int, count: int, seed: int, start: int, key: tuple, p_zero_variance, threshold: float,
              readmit: float) -> tuple[list[int], int, int]:
    """(admitted prompts, new stream position, prompts skipped): walk the uniform stream from
    ``start`` in chunks of ``count``, each chunk's ``skip_mask`` seeded by (seed, *key, chunk),
    admitting prompts until ``count`` are in; the position moves past the last prompt looked at.
    At most one epoch of the pool plus one chunk is looked at (then the step takes fewer)."""
    admitted, skipped, chunk = [], 0, 0
    while len(admitted) < count and chunk * count <= n_pool + count:
        idx = batch_indices(n_pool, seed, start, count)                               # (count,)
        skip = skip_mask(np.asarray(p_zero_variance)[idx], threshold, readmit,
                         np.random.default_rng([seed, *key, chunk]))                  # (count,)
        for i, s in zip(idx, skip):
            start += 1
            if s:
                skipped += 1
            else:
                admitted.append(i)
                if len(admitted) == count:
                    break
        chunk += 1
    return admitted, start, skipped


def route(a, b, has_hint, G: int, threshold: float):
    """frontier's routes, (n,) bool each: (skip, hint) from the posterior Beta(a, b) of each
    prompt: P(G rollouts all pass) ≥ threshold -> skip; P(all fail) ≥ threshold -> hint if the
    prompt has one (``has_hint`` (n,) bool), else skip."""
    p_pass, p_fail = moment(a, b, G, 0.0), moment(a, b, 0.0, G)                      # (n,) each
    fail = p_fail >= threshold
    return (p_pass >= threshold) | (fail & ~has_hint), fail & has_hint


def frontier_pick(sp: SelectSpec, counts, has_hint, count: int, n_pool: int, seed: int):
    """frontier's draw: the skip walk over ``route``'s skip set (each re-admitted plain with
    probability skip_readmit), then the admitted hint-routed prompts into ``out.direct`` unless a
    draw (seeded by the step's key) sends them plain."""
    skip, hint = route(*posterior(*counts), has_hint, sp.G, sp.skip_threshold)

    def pick(start, key, out):
        idx, start, skipped = skip_draw(n_pool, count, seed, start, key, skip.astype(float), 0.5, sp.skip_readmit)
        plain = np.random.default_rng([seed, *key, 1 << 20]).random(len(idx)) < sp.skip_readmit      # (count,)
        routed = {i for i, p in zip(idx, plain) if hint[i] and not p}
        out.direct |= routed
        out.metrics["prompts_skipped"] = out.metrics.get("prompts_skipped", 0) + skipped
        out.metrics["prompts_hint_routed"] = out.metrics.get("prompts_hint_routed", 0) + len(routed)
        return idx, start
    return pick


def picker(sp: SelectSpec, counts, n_pool: int, world: int, seed: int, has_hint=None):
    """``collect_groups``' draw for the rules with groups of num_generations: uniform, hard_filter,
    beta (∝ w(p̂)), skip and frontier (``has_hint`` (n_pool,) bool). ``counts``: (c_eff, k_eff)
    or None (uniform)."""
    count = sp.local * world
    if sp.rule == "frontier":
        return frontier_pick(sp, counts, has_hint, count, n_pool, seed)
    if sp.rule == "skip":   # with Guide an all-fail group is re-rolled with a hint: only all-pass is waste
        a, b = posterior(*counts)
        p_zv = moment(a, b, sp.G, 0.0) if sp.guide else zero_variance_prob(a, b, sp.G)   # (n_pool,)

        def pick(start, key, out):
            idx, start, skipped = skip_draw(n_pool, count, seed, start, key, p_zv, sp.skip_threshold,
                                            sp.skip_readmit)
            out.metrics["prompts_skipped"] = out.metrics.get("prompts_skipped", 0) + skipped
            return idx, start
        return pick
    weights = None if sp.rule == "uniform" else prompt_weights(*counts, sp.rule, sp.alpha, sp.beta)

    def pick(start, key, out):
        if weights is not None:
            out.metrics["mean_prompt_weight"] = float(weights.mean())
        return pick_prompts(n_pool, count, seed, start, weights, key), start + count
    return pick


# ---------------------------------------------------------------------------------------------
# allocate and adaptive: groups of unequal size
# ---------------------------------------------------------------------------------------------
def count_waste(out: Collected, groups: list[dict]) -> None:
    """Final groups into ``out``'s rolled / informative / zero-variance counts."""
    if not groups:
        return
    sizes = [len(g["completions"]) for g in groups]
    varied = ragged_has_variance(torch.cat([g["rewards"] for g in groups]), sizes)   # (groups,)
    out.rolled, out.informative = out.rolled + len(groups), out.informative + int(varied.sum())
    out.rollouts_zero_variance += sum(n for n, v in zip(sizes, varied.tolist()) if not v)
    out.zero_std.append(float((~varied).float().mean()))


def collect_allocated(ro: Roller, sp: SelectSpec, counts, step: int, prompts_seen: int, world: int, rank: int,
                      seed: int, ledger: Ledger, tag: str, stage: str, once_failed: dict) -> tuple[Collected, int]:
    """One round: ``candidates`` prompts per process from the uniform stream (this process's
    slice of the global draw), ``posterior.allocate`` of its ``budget`` over them, the groups."""
    out, n = Collected(rounds=1), sp.candidates * world
    idx = batch_indices(len(ro.pool), seed, prompts_seen, n)[rank::world]
    a, b = posterior(*counts)
    sizes = allocate(a[idx], b[idx], sp.budget, sp.min_group, sp.max_group)           # (candidates,)
    mine, sizes = [i for i, s in zip(idx, sizes) if s], [int(s) for s in sizes if s]
    out.groups = roll_sized(ro, mine, sizes, (seed, step, 1, rank), out)
    count_waste(out, out.groups)
    record_round(tally([ro.pool[g["pool_index"]].id for g in out.groups for _ in g["correct"]],
                       [x for g in out.groups for x in g["correct"]]), {}, world, ledger, tag, stage, None, step,
                 once_failed)
    out.metrics["prompts_unallocated"] = sp.candidates - len(mine)
    return out, prompts_seen + n


def collect_adaptive(ro: Roller, sp: SelectSpec, step: int, prompts_seen: int, world: int, rank: int, seed: int,
                     accelerator, ledger: Ledger, tag: str, stage: str, once_failed: dict) -> tuple[Collected, int]:
    """The uniform stream's ``local`` prompts per process, ``round`` rollouts each per round, until
    ``settled_hard_filter`` (a success and a failure, or ``cap`` rollouts) holds for all of them on
    every process; each prompt's rounds make one group."""
    out = Collected()
    mine = batch_indices(len(ro.pool), seed, prompts_seen, sp.local * world)[rank::world]
    groups = [{"prompt": ro.prompt_ids[i], "rewards": torch.zeros(0), "correct": [], "completions": [],
               "sample_logp": [], "hinted": False, "pool_index": i} for i in mine]
    while True:
        c = np.array([sum(g["correct"]) for g in groups], dtype=np.int64)             # (local,)
        k = np.array([len(g["correct"]) for g in groups], dtype=np.int64)             # (local,)
        active = np.flatnonzero(~settled_hard_filter(c, k, sp.cap)).tolist() if groups else []
        left = torch.tensor(float(len(active)), device=accelerator.device)
        if float(accelerator.reduce(left, "sum")) == 0:
            break
        out.rounds += 1
        new = roll_sized(ro, [mine[j] for j in active], [sp.round] * len(active), (seed, step, out.rounds, rank),
                         out) if active else []
        for j, g in zip(active, new):
            h = groups[j]
            h["rewards"] = torch.cat([h["rewards"].to(g["rewards"]), g["rewards"]])
            for key in ("correct", "completions", "sample_logp"):
                h[key] = h[key] + g[key]
        record_round(tally([ro.pool[g["pool_index"]].id for g in new for _ in g["correct"]],
                           [x for g in new for x in g["correct"]]), {}, world, ledger, tag, stage, None, step,
                     once_failed)
    out.sampled = len(groups)
    out.groups = groups
    count_waste(out, groups)
    return out, prompts_seen + sp.local * world


def collect(ro: Roller, sp: SelectSpec, counts, step: int, prompts_seen: int, world: int, rank: int, seed: int,
            accelerator, ledger: Ledger, tag: str, stage: str, hint_stage: str | None,
            once_failed: dict) -> tuple[Collected, int]:
    """This process's groups of one step under ``sp.rule`` (``counts``: the ledger's (c_eff, k_eff)
    per pool prompt, or None for uniform), and the new stream position."""
    if sp.rule == "allocate":
        return collect_allocated(ro, sp, counts, step, prompts_seen, world, rank, seed, ledger, tag, stage,
                                 once_failed)
    if sp.rule == "adaptive":
        return collect_adaptive(ro, sp, step, prompts_seen, world, rank, seed, accelerator, ledger, tag, stage,
                                once_failed)
    has_hint = np.isin(np.arange(len(ro.pool)), list(ro.hint_ids or ()))                    # (n_pool,)
    return collect_groups(ro, step, prompts_seen, picker(sp, counts, len(ro.pool), world, seed, has_hint),
                          sp.local, world, rank, seed, sp.dynamic, sp.max_rounds, accelerator, ledger, tag, stage,
                          hint_stage, once_failed)


def reads_counts(rule: str) -> bool:
    """Whether ``rule`` needs the ledger's counts (all but uniform and adaptive)."""
    return rule not in ("uniform", "adaptive")
