"""The RL loop's parts other than the loss: which prompts, their rollouts and rewards, the
log-probs of completions, and the PPO critic (paced/train/rl.py calls them in order).

Shapes: B rows of one packed micro-batch, P prompt positions (left-padded), R completion
positions, N rows of the whole batch, L its longest completion, H hidden size, V vocabulary.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from ..models import logits_head
from ..rewards import compute_rewards, verifier_reward
from ..rl_losses import chunked_logprobs
from ..rollout import SAMPLERS, SamplingParams
from ..tasks import verify
from ..teacher import backbone, response_hidden
from .batches import batch_indices


def pick_prompts(n_pool: int, count: int, seed: int, start: int, weights=None, key=()) -> list[int]:
    """Indices of ``count`` training prompts: the seeded per-epoch permutation from sample
    ``start`` on (a pure function: resume is exact), or ∝ ``weights`` (seeded by ``key``)."""
    if weights is None:
        return batch_indices(n_pool, seed, start, count)
    live = np.flatnonzero(weights > 0)
    if live.size == 0:
        raise ValueError("rl.prompt_weighting: every prompt has weight 0 (p̂ all 0 or 1)")
    rng = np.random.default_rng([seed, *key])
    return rng.choice(live, count, replace=count > live.size, p=weights[live] / weights[live].sum()).tolist()


def seed_of(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def roll(model, tok, prompts, examples, funcs, r, seed: int, stops: list[int], backend: str = "hf"):
    """num_generations completions per prompt, verified against ``examples`` (the plain problem,
    hinted prompt or not): (completions, sample log-probs, verdicts, rewards (N,), [s sampling,
    s scoring]) with rows grouped per prompt; completions end at any of ``stops``."""
    t0 = time.perf_counter()
    ro = SAMPLERS[backend](model, prompts, SamplingParams(n=r.num_generations, temperature=r.temperature,
                                                          top_p=r.top_p, top_k=r.top_k,
                                                          max_tokens=r.max_completion_length, seed=seed),
                           eos_token_id=stops, pad_token_id=tok.pad_token_id,
                           batch_size=r.sampling_batch_size)
    t1 = time.perf_counter()
    texts = ro.texts(tok)
    rows_ex = [examples[int(j)] for j in ro.prompt_index]
    correct = [verify(t, e, f) for t, e, f in zip(texts, rows_ex, ro.finished.tolist())]   # once: ledger, reward
    n_tok = ro.completion_mask.sum(-1).tolist()
    comps = [c[:n] for c, n in zip(ro.completion_ids.tolist(), n_tok)]
    rewards = compute_rewards([_verified(correct) if f is verifier_reward else f for f in funcs],
                              r.reward_weights or None, [e.prompt for e in rows_ex], texts, rows_ex, comps)
    lps = [lp[:n] for lp, n in zip(ro.sample_logp, n_tok)]
    return comps, lps, correct, rewards, [t1 - t0, time.perf_counter() - t1]


# Tokens (rows × positions) per chunk of the head: (512, V) fp32 logits, 100 MB at V = 49,152.
LOGPROB_CHUNK = 512


def completion_hidden(model, ids, mask, pos, P: int, R: int) -> torch.Tensor:
    """Final hidden states at the positions that predict the R completion tokens: (B, R, H).

    The forward goes through ``model`` itself (possibly DDP-wrapped, so that DDP sees it; HF
    gradient checkpointing inside it works as usual) with ``use_cache=False`` (no KV cache: a
    copy of every layer's keys and values) and ``logits_to_keep=1``; the backbone's output is
    taken by a forward hook, so every layer's hidden states (``output_hidden_states``) are never
    collected. A model without a separate backbone falls back to ``response_hidden``.
    """
    body = backbone(model.module if hasattr(model, "module") else model)
    if body is None:
        return response_hidden(model, ids, mask, pos, P, R)
    seen = []
    handle = body.register_forward_hook(lambda mod, args, out: seen.append(out[0]))
    try:
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return seen[-1][:, P - 1: P + R - 1]                                     # (B, R, H)


def completion_logprobs(model, ids, mask, pos, P: int, R: int, temperature: float,
                        entropy: str = "none", chunk_size: int = LOGPROB_CHUNK):
    """log π(o_t | q, o_<t) at ``temperature`` for the R completion tokens: (B, R), and the
    per-token entropy (B, R) with ``entropy`` "grad" (differentiable, for a bonus) or "value"
    (detached, for logging); else None. ``model`` may be DDP-wrapped (the forward goes through it).
    The head runs ``chunk_size`` tokens at a time (``chunked_logprobs``): the (B, R, V) logits
    never exist, with grad or without."""
    h = completion_hidden(model, ids, mask, pos, P, R)                       # (B, R, H)
    return chunked_logprobs(h, logits_head(model), ids[:, P:P + R], temperature, entropy, chunk_size)


def train_mode_without_dropout(model) -> None:
    """``model.train()`` with every dropout off, as TRL's ``disable_dropout``: Hugging Face's
    activation checkpointing runs in train mode only, while the policy otherwise trains in eval
    mode (its log-probs then match the sampler's). Sets ``nn.Dropout.p`` and every float module
    attribute whose name contains "dropout" (e.g. attention_dropout) to 0."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for k in [k for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)]:
            setattr(m, k, 0.0)


@torch.no_grad()
def critic_values(critic, batches, N, L, dev):
    """V_t for every completion token of the batch (N, L) and the completion mask (N, L)."""
    values, cmask, at = torch.zeros(N, L), torch.zeros(N, L), 0
    for ids, mask, pos, P, R in batches:
        v = critic(ids, mask, pos, P, R).cpu()                               # (b, R)
        b = ids.shape[0]
        values[at:at + b, :R], cmask[at:at + b, :R] = v, mask[:, P:].float().cpu()
        at += b
    return values * cmask, cmask


@torch.no_grad()
def ref_logprobs(ref, batches, N, L, temperature):
    out, at = torch.zeros(N, L), 0
    for ids, mask, pos, P, R in batches:
        lp, _ = completion_logprobs(ref, ids, mask, pos, P, R, temperature)
        out[at:at + ids.shape[0], :R] = lp.cpu()
        at += ids.shape[0]
    return out


def _verified(correct: list[bool]):
    """The verifier reward of this round's completions, already computed for the ledger."""
    def verifier(prompts, completions, **kwargs) -> list[float]:
        return [float(c) for c in correct]
    return verifier


class ValueModel(torch.nn.Module):
    """PPO critic: a copy of the policy's backbone and a scalar head, V(q, o_<t) per position."""

    def __init__(self, policy):
        super().__init__()
        self.body = copy.deepcopy(backbone(policy))
        self.head = torch.nn.Linear(policy.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, ids, mask, pos, P: int, R: int) -> torch.Tensor:
        h = self.body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        return self.head(h[:, P - 1: P + R - 1]).squeeze(-1).float()          # (B, R)
