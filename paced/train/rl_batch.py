"""One RL step's training batch: its groups packed into micro-batches (``pack_batch``), and what
the loss compares against (``targets_for``: advantages, π_old, the reference's log-probs, the
loss type's normalisers), between the rollouts (paced/train/rollouts.py) and the update
(paced/train/rl.py).

Shapes: N rows of the batch, L its longest completion. A group is a prompt's rows, contiguous;
groups have ``num_generations`` rows each, or unequal sizes under frontier selection's allocate
and adaptive rules (``Batch.sizes``; advantages per group: ``rl_losses.ragged_advantages``; how
the loss types weigh unequal groups: rl_losses.py above LOSS_TYPES).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rl_losses import ADVANTAGES, gae, ragged_advantages, std_from_moments, terminal_rewards, whiten
from .batches import pack_rows
from .critic import critic_values
from .logprobs import ref_logprobs


@dataclass
class Batch:
    """One step's training rows, packed: ``micro`` row lists and their ``packed`` tensors
    (ids, mask, pos, P, R); per row (N,) or (N, L): rewards, completion lengths, log-probs of the
    rollout engine and of π_old, Guide's hinted flags; ``sizes`` the groups' rows, in order."""
    micro: list[list[int]]
    packed: list[tuple]
    rewards: torch.Tensor
    lengths: torch.Tensor
    old_logp: torch.Tensor
    engine_logp: torch.Tensor
    hinted: torch.Tensor
    N: int
    L: int
    sizes: list[int]


def pack_batch(groups: list[dict], micro_size: int, pad: int, dev) -> Batch:
    """The groups' rows in order, in micro-batches of ``micro_size`` rows (a group may straddle
    two: its advantages are computed on the whole batch first)."""
    rewards = torch.cat([g["rewards"] for g in groups]) if groups else torch.zeros(0)
    completions = [c for g in groups for c in g["completions"]]
    sizes = [len(g["completions"]) for g in groups]
    prompts = [g["prompt"] for g, n in zip(groups, sizes) for _ in range(n)]
    N, L = len(completions), max((len(c) for c in completions), default=1)
    old_logp = torch.zeros(N, L)                                            # (N, L) the engine's
    for i, lp in enumerate(lp for g in groups for lp in g["sample_logp"]):
        old_logp[i, : len(lp)] = lp
    hinted = torch.tensor([g["hinted"] for g, n in zip(groups, sizes) for _ in range(n)], dtype=torch.bool)  # (N,)
    micro = [list(range(s, min(s + micro_size, N))) for s in range(0, N, micro_size)]
    packed = [pack_rows(prompts, completions, rows, pad, dev) for rows in micro]
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.float)
    return Batch(micro, packed, rewards, lengths, old_logp, old_logp, hinted, N, L, sizes)


@dataclass
class Targets:
    """What the loss compares against, per row (N,) or token (N, L): advantages, kept rows, π_old,
    the engine's and the reference's log-probs, PPO's values and returns; ``norm``: the loss
    type's global normalisers."""
    adv: torch.Tensor
    keep: torch.Tensor
    old_logp: torch.Tensor
    engine_logp: torch.Tensor
    hinted: torch.Tensor
    ref_logp: torch.Tensor | None
    values: torch.Tensor | None
    returns: torch.Tensor | None
    norm: dict


def advantages_for(rewards, sizes: list[int], advantage: str, adv_kw: dict, batch_moments=None):
    """``ADVANTAGES[advantage]`` of the grouped rewards (N,), groups of ``sizes`` rows: (A (N,),
    keep (N,)); GRPO's scale_rewards=batch under several processes divides by the std of
    ``batch_moments`` (count, sum, sum of squares over all processes). Groups all of one size
    take the rule's own batched call; unequal ones ``ragged_advantages`` (the same numbers)."""
    if not len(rewards):
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    kw = adv_kw if batch_moments is None else {**adv_kw, "batch_std": std_from_moments(*batch_moments)}
    if len(set(sizes)) == 1:
        return ADVANTAGES[advantage](rewards, sizes[0], **kw)
    return ragged_advantages(rewards, sizes, advantage, **kw)


def targets_for(accelerator, raw, ref, critic, batch: Batch, advantage: str, adv_kw: dict,
                global_std: bool, gamma: float, lam: float, whiten_advantages: bool, temperature: float,
                recompute_old: bool, max_completion_length: int) -> Targets:
    """Advantages (PPO: GAE over the critic's values), π_old (the trainer's own, recomputed once,
    when ``recompute_old``: another engine's numbers must not enter the ratio), the reference's
    log-probs, and the loss type's normalisers over the whole (global) batch."""
    N, L, dev = batch.N, batch.L, accelerator.device
    old_logp = batch.old_logp
    if recompute_old and N:
        old_logp = torch.where(batch.hinted[:, None], old_logp, ref_logprobs(raw, batch.packed, N, L, temperature))
    values = returns = None
    if advantage == "ppo":
        values, cmask = critic_values(critic, batch.packed, N, L, dev)
        adv, returns = gae(terminal_rewards(batch.rewards, cmask), values, cmask, gamma, lam)   # (N, L) x 2
        adv = whiten(adv, cmask) if whiten_advantages else adv
        keep = torch.ones(N, dtype=torch.bool)
    else:
        moments = None
        if global_std:   # GRPO scale_rewards=batch under several processes: the global std
            r = batch.rewards.double()
            moments = accelerator.reduce(torch.tensor([float(N), float(r.sum()), float(r.pow(2).sum())],
                                                      dtype=torch.float64, device=dev), "sum").tolist()
        adv, keep = advantages_for(batch.rewards, batch.sizes, advantage, adv_kw, moments)
    ref_logp = ref_logprobs(ref, batch.packed, N, L, temperature) if ref is not None else None
    totals = accelerator.reduce(torch.tensor([float(keep.sum()), float((batch.lengths * keep).sum()),
                                              float(len(batch.micro))], device=dev), "sum").tolist()
    norm = {"num_sequences": totals[0], "num_tokens": totals[1], "max_completion_length": max_completion_length,
            "num_micro_batches": max(totals[2], 1)}
    return Targets(adv, keep, old_logp, batch.engine_logp, batch.hinted, ref_logp, values, returns, norm)
