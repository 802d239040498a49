"""Log-probabilities of completions from final hidden states, what the RL loss, the reference
model and the engine comparison share (and the distillation losses' layout: ``batches.pack``).

Shapes: B rows of one packed micro-batch, P prompt positions (left-padded), R completion
positions, N rows of the whole batch, L its longest completion, H hidden size, V vocabulary.
"""
from __future__ import annotations

import torch

from ..models import logits_head
from ..rl_losses import chunked_logprobs
from ..teacher import backbone, response_hidden


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


@torch.no_grad()
def ref_logprobs(ref, batches, N, L, temperature):
    out, at = torch.zeros(N, L), 0
    for ids, mask, pos, P, R in batches:
        lp, _ = completion_logprobs(ref, ids, mask, pos, P, R, temperature)
        out[at:at + ids.shape[0], :R] = lp.cpu()
        at += ids.shape[0]
    return out
