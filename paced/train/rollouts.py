"""The rollout phase of an RL step: which prompts, their groups of completions and rewards,
Guide's hinted replacement and dynamic sampling, recorded in the ledger (``collect_groups``, which
paced/train/frontier.py's ``collect`` calls for the rules that roll num_generations per prompt;
``roll_sized`` and ``record_round`` are what its allocate and adaptive rules build on).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..guide import all_fail, hint_prompt, replace_groups
from ..ledger import Ledger, gather_counts, tally
from ..models import encode_prompts
from ..rewards import compute_rewards, verifier_reward
from ..rl_losses import group_has_variance, reward_zero_std_share
from ..rollout import SAMPLERS, SamplingParams
from ..runlog import console
from ..tasks import verify
from ..weighting import weight_of
from .batches import batch_indices


def pick_prompts(n_pool: int, count: int, seed: int, start: int, weights=None, key=()) -> list[int]:
    """Indices of ``count`` training prompts: the seeded per-epoch permutation from sample
    ``start`` on (a pure function: resume is exact), or ∝ ``weights`` (seeded by ``key``)."""
    if weights is None:
        return batch_indices(n_pool, seed, start, count)
    live = np.flatnonzero(weights > 0)
    if live.size == 0:
        raise ValueError("rl.prompt_selection: every prompt has weight 0 (p̂ all 0 or 1)")
    rng = np.random.default_rng([seed, *key])
    return rng.choice(live, count, replace=count > live.size, p=weights[live] / weights[live].sum()).tolist()


def seed_of(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def prompt_weights(c_eff, k_eff, weighting: str, alpha: float, beta: float) -> np.ndarray:
    """w(p̂) per prompt, p̂ = c_eff / k_eff from the ledger's (discounted) counts, (n,) each;
    a prompt with nothing on record (k_eff = 0) counts as 1 of 2 (p̂ = 1/2)."""
    c, k = np.asarray(c_eff, dtype=float), np.asarray(k_eff, dtype=float)
    c, k = np.where(k > 0, c, 1.0), np.where(k > 0, k, 2.0)
    p = c / k
    return weight_of(p, weighting, alpha, beta)


@dataclass
class Roller:
    """What draws and scores rollouts, fixed for a run (``params.seed`` is set per call)."""
    model: torch.nn.Module
    tok: object
    funcs: list
    reward_weights: list[float] | None
    params: SamplingParams            # n = num_generations
    batch_size: int
    stops: list[int]
    backend: str
    pool: list = field(default_factory=list)          # the training problems ...
    prompt_ids: list = field(default_factory=list)    # ... their encoded prompts ...
    hint_ids: dict | None = None                      # ... and hinted prompts (Guide), by pool index


def roll(ro: Roller, prompts: list[list[int]], examples: list, seed: int):
    """``params.n`` completions per prompt, verified against ``examples`` (the plain problem,
    hinted prompt or not): (completions, sample log-probs, verdicts, rewards (N,), [s sampling,
    s scoring]), rows grouped per prompt. A completion cut at max_tokens is credited only with an
    explicit final answer (``tasks.verify``)."""
    t0 = time.perf_counter()
    out = SAMPLERS[ro.backend](ro.model, prompts, replace(ro.params, seed=seed), eos_token_id=ro.stops,
                               pad_token_id=ro.tok.pad_token_id, batch_size=ro.batch_size)
    t1 = time.perf_counter()
    texts = out.texts(ro.tok)
    rows_ex = [examples[int(j)] for j in out.prompt_index]
    correct = [verify(t, e, f) for t, e, f in zip(texts, rows_ex, out.finished.tolist())]   # once: ledger, reward
    n_tok = out.completion_mask.sum(-1).tolist()
    comps = [c[:n] for c, n in zip(out.completion_ids.tolist(), n_tok)]
    rewards = compute_rewards([_verified(correct) if f is verifier_reward else f for f in ro.funcs],
                              ro.reward_weights, [e.prompt for e in rows_ex], texts, rows_ex, comps)
    lps = [lp[:n] for lp, n in zip(out.sample_logp, n_tok)]
    return comps, lps, correct, rewards, [t1 - t0, time.perf_counter() - t1]


def _verified(correct: list[bool]):
    """The verifier reward of this round's completions, already computed for the ledger."""
    def verifier(prompts, completions, **kwargs) -> list[float]:
        return [float(c) for c in correct]
    return verifier


@dataclass
class Collected:
    """One step's groups (each: prompt, rewards (n,), verdicts, completions, sample log-probs,
    hinted) and what it cost (``tokens``: completion tokens sampled): ``rolled`` groups sampled
    (a Guide replacement is a group of its own; dynamic sampling's dropped ones count),
    ``informative`` of them with rewards that vary, ``rollouts_zero_variance`` the rollouts of
    the others; ``metrics``: the selection rule's own."""
    groups: list[dict] = field(default_factory=list)
    rounds: int = 0
    sampled: int = 0
    rollouts: int = 0
    guided: int = 0
    guided_solved: int = 0
    zero_std: list[float] = field(default_factory=list)
    t_sample: float = 0.0
    t_reward: float = 0.0
    tokens: int = 0
    rolled: int = 0
    informative: int = 0
    rollouts_zero_variance: int = 0
    metrics: dict = field(default_factory=dict)
    direct: set = field(default_factory=set)   # pool indices to roll hinted only (frontier selection)

    def waste(self, rewards, G: int) -> None:
        """Count groups of G rows (``rewards`` (N,)) into rolled / informative / zero-variance."""
        varied = group_has_variance(rewards, G)                       # (groups,)
        self.rolled, self.informative = self.rolled + varied.numel(), self.informative + int(varied.sum())
        self.rollouts_zero_variance += G * int((~varied).sum())


def roll_round(ro: Roller, mine: list[int], seed_key: tuple, out: Collected):
    """One round of this process's prompts ``mine``: G rollouts each; with Guide (``hint_ids``),
    a group whose G rollouts all fail and whose prompt has a hint is replaced by G rollouts of the
    hinted prompt (``guide.replace_groups``), and the prompts in ``out.direct`` (frontier
    selection: the posterior says their plain group would all fail) get only the hinted rollouts.
    Returns the groups' rows and the ledger counts (plain, hinted); adds the round's costs to
    ``out``."""
    G, pool, prompt_ids, hint_ids = ro.params.n, ro.pool, ro.prompt_ids, ro.hint_ids
    plain = [j for j, i in enumerate(mine) if i not in out.direct]
    exs = [pool[mine[j]] for j in plain]
    comps, lps, correct, rewards, ts = roll(ro, [prompt_ids[mine[j]] for j in plain], exs, seed_of(*seed_key)) \
        if plain else ([], [], [], torch.zeros(0), [0.0, 0.0])
    counts, hint_counts = tally([e.id for e in exs for _ in range(G)], correct), {}
    if plain:
        out.zero_std.append(reward_zero_std_share(rewards, G))
        out.waste(rewards, G)
    out.tokens += sum(len(x) for x in comps)
    stuck = sorted([plain[k] for k in all_fail(correct, G).nonzero().flatten().tolist()
                    if hint_ids is not None and mine[plain[k]] in hint_ids] +
                   [j for j, i in enumerate(mine) if i in out.direct])             # positions in mine
    comps, lps, correct = (replace_groups([None] * (G * len(mine)), x, plain, G) for x in (comps, lps, correct))
    rewards = replace_groups(torch.zeros(G * len(mine), dtype=rewards.dtype), rewards, plain, G)
    if stuck:
        h = roll(ro, [hint_ids[mine[j]] for j in stuck], [pool[mine[j]] for j in stuck], seed_of(*seed_key, 1))
        hint_counts = tally([pool[mine[j]].id for j in stuck for _ in range(G)], h[2])
        out.waste(h[3], G)
        out.tokens += sum(len(x) for x in h[0])
        comps, lps, correct, rewards = (replace_groups(x, hx, stuck, G)
                                        for x, hx in zip((comps, lps, correct, rewards), h))
        out.guided_solved += sum(any(h[2][k * G:(k + 1) * G]) for k in range(len(stuck)))
        ts = [ts[0] + h[4][0], ts[1] + h[4][1]]
    out.t_sample, out.t_reward = out.t_sample + ts[0], out.t_reward + ts[1]
    out.sampled, out.guided = out.sampled + len(mine), out.guided + len(stuck)
    out.rollouts += G * (len(plain) + len(stuck))
    stuck_set = set(stuck)
    groups = [{"prompt": prompt_ids[i], "rewards": rewards[j * G:(j + 1) * G], "correct": correct[j * G:(j + 1) * G],
               "completions": comps[j * G:(j + 1) * G], "sample_logp": lps[j * G:(j + 1) * G],
               "hinted": j in stuck_set} for j, i in enumerate(mine)]
    return groups, group_has_variance(rewards, G), counts, hint_counts


def roll_sized(ro: Roller, mine: list[int], sizes: list[int], seed_key: tuple, out: Collected) -> list[dict]:
    """``sizes[j]`` rollouts of prompt ``mine[j]`` (groups of unequal size; no Guide): one sampler
    call per distinct size (seeded by ``seed_key`` and the size), the groups back in order. Adds
    the rollouts and their costs to ``out`` (not the waste counts: a group may grow over rounds)."""
    groups: list[dict | None] = [None] * len(mine)
    for n in sorted(set(sizes)):
        js = [j for j, s in enumerate(sizes) if s == n]
        comps, lps, correct, rewards, ts = roll(replace(ro, params=replace(ro.params, n=n)),
                                                [ro.prompt_ids[mine[j]] for j in js], [ro.pool[mine[j]] for j in js],
                                                seed_of(*seed_key, n))
        for k, j in enumerate(js):
            sl = slice(k * n, (k + 1) * n)
            groups[j] = {"prompt": ro.prompt_ids[mine[j]], "rewards": rewards[sl], "correct": correct[sl],
                         "completions": comps[sl], "sample_logp": lps[sl], "hinted": False, "pool_index": mine[j]}
        out.t_sample, out.t_reward = out.t_sample + ts[0], out.t_reward + ts[1]
        out.tokens += sum(len(x) for x in comps)
    out.sampled, out.rollouts = out.sampled + len(mine), out.rollouts + sum(sizes)
    return groups


def record_round(counts: dict, hint_counts: dict, world: int, ledger: Ledger, tag: str, stage: str,
                 hint_stage: str | None, step: int, once_failed: dict) -> None:
    """A round's ledger rows, every process's (a collective), and ``once_failed``'s update."""
    counts = gather_counts(counts, world)
    ledger.record(counts, model=tag, stage=stage, step=step + 1)
    if hint_stage is not None:
        ledger.record(gather_counts(hint_counts, world), model=tag, stage=hint_stage, step=step + 1)
    for pid, (c, _) in counts.items():
        if c == 0 or pid in once_failed:
            once_failed[pid] = c > 0


def collect_groups(ro: Roller, step: int, prompts_seen: int, pick, local: int, world: int, rank: int, seed: int,
                   dynamic: bool, max_rounds: int, accelerator, ledger: Ledger, tag: str, stage: str,
                   hint_stage: str | None, once_failed: dict) -> tuple[Collected, int]:
    """This process's ``local`` groups of one step: rounds of ``pick(prompts_seen, key, out)`` ->
    (global prompts, new stream position) (every process draws the same global prompts and takes
    its slice; frontier.py's ``picker``) and ``roll_round``; with ``dynamic`` (DAPO's dynamic
    sampling) groups whose rewards are all equal are dropped and rounds go on until every process
    is full or ``max_rounds`` is spent. Every process records every process's rollouts in its
    ledger (so their p̂ agree) and updates ``once_failed``. Returns the groups and the new stream
    position."""
    out = Collected()
    while True:
        idx, prompts_seen = pick(prompts_seen, (step, out.rounds), out)
        mine = idx[rank::world] if len(out.groups) < local else []
        out.rounds += 1
        counts, hint_counts = {}, {}   # {problem id: [successes, trials]} of this round
        if mine:
            groups, varied, counts, hint_counts = roll_round(ro, mine, (seed, step, out.rounds, rank), out)
            out.groups += [g for g, v in zip(groups, varied) if v or not dynamic]
        record_round(counts, hint_counts, world, ledger, tag, stage, hint_stage, step, once_failed)
        short = torch.tensor(float(len(out.groups) < local), device=accelerator.device)
        if not dynamic or out.rounds >= max_rounds or float(accelerator.reduce(short, "sum")) == 0:
            break
    out.groups = out.groups[:local]
    return out, prompts_seen


def encode_hints(tok, pool, template: str, system: str, room, long: str, main: bool) -> dict[int, list[int]]:
    """Guide's hinted prompts, by pool index, of the problems that have a hint."""
    hinted = [i for i, e in enumerate(pool) if e.hint]
    if not hinted:
        raise ValueError("rl.guide.enabled: no training prompt has a hint (synthetic hint_level 0, or the "
                         "data file has no hint field: see data.train[*].hint_field)")
    if main:
        console.print(f"guide: {len(hinted)} of {len(pool)} training prompts have a hint")
    return dict(zip(hinted, encode_prompts(tok, [hint_prompt(template, pool[i].prompt, pool[i].hint) for i in hinted],
                                           system, room, long, [pool[i].id for i in hinted])))
