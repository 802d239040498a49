"""Batches every training loop builds: the data order, SFT rows, and packed prompt + response
tensors. Pure functions of token ids and numbers (no configs, no models).

- ``batch_indices``: the global batch at a position of an endless, per-epoch shuffled stream (a
  pure function of its arguments: what makes resume exact).
- ``tokenize_sft`` / ``collate``: one chat turn as (input_ids, labels) and right-padded (B, T).
- ``pack`` / ``pack_rows``: left-padded prompts + right-padded responses, (B, P + R), the layout
  the distillation and RL losses read hidden states from.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..losses import IGNORE
from ..models import render_chat, render_prompt


def batch_indices(n_examples: int, seed: int, start: int, size: int) -> list[int]:
    """Indices of the global batch that starts at sample ``start`` of an endless, per-epoch
    shuffled stream; a pure function of its arguments (this is what makes resume exact)."""
    out = []
    while len(out) < size:
        epoch, offset = divmod(start + len(out), n_examples)
        perm = np.random.default_rng([seed, epoch]).permutation(n_examples)
        out += perm[offset: offset + size - len(out)].tolist()
    return out


def tokenize_sft(tokenizer, prompt: str, response: str, max_length: int, system_prompt: str = "default",
                 stops: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one chat turn; labels are IGNORE on the prompt.

    With a chat template the response is the template's assistant turn, cut after its first stop
    token (``stops``, default the tokenizer's eos): ChatML's turn ends ``<|im_end|>\\n`` and the
    model must learn to emit ``<|im_end|>``, not what the template writes after it. Without a
    template the response is followed by eos."""
    prompt_text = render_prompt(tokenizer, prompt, system_prompt)
    stops = stops or [tokenizer.eos_token_id]
    if getattr(tokenizer, "chat_template", None):
        full_text = render_chat(tokenizer, [{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": response}], system_prompt)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template renders the user turn differently with and without "
                             "the assistant turn; cannot locate the response tokens")
        response_text = full_text[len(prompt_text):]
        p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
        end = next((i for i, t in enumerate(r_ids) if t in stops), None)
        r_ids = r_ids[:end + 1] if end is not None else r_ids + [stops[0]]
    else:
        p_ids = tokenizer(prompt_text)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + r_ids)[:max_length]
    labels = ([IGNORE] * len(p_ids) + r_ids)[:max_length]
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad to the longest row: input_ids, attention_mask, labels, each (B, T)."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, mask, labels


class Packed(NamedTuple):
    """Left-padded prompts + right-padded responses. A tuple: ``ids, mask, pos, P = pack(...)``."""
    ids: torch.Tensor     # (B, P + R) token ids, pad outside each row's prompt + response
    mask: torch.Tensor    # (B, P + R) attention mask
    pos: torch.Tensor     # (B, P + R) position ids (0 at each row's first real token)
    P: int                # the column where every response starts


class PackedRows(NamedTuple):
    """``Packed`` on a device, with R (the response columns): one RL micro-batch."""
    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    P: int
    R: int


def pack(prompts: list[list[int]], responses: list[list[int]], pad: int) -> Packed:
    """Left-padded prompts + right-padded responses: ids, attention mask, position ids (B, P+R),
    and P, the column where every response starts."""
    P, R = max(map(len, prompts)), max(map(len, responses))
    ids = torch.full((len(prompts), P + R), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P], ids[i, P:P + len(r)] = torch.tensor(p), torch.tensor(r)
        mask[i, P - len(p):P + len(r)] = 1
    return Packed(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), P)


def pack_rows(prompts, completions, rows: list[int], pad: int, dev) -> PackedRows:
    """``pack`` of the batch rows ``rows`` (prompt i with completion i), on ``dev``."""
    ids, mask, pos, P = pack([prompts[i] for i in rows], [completions[i] for i in rows], pad)
    return PackedRows(ids.to(dev), mask.to(dev), pos.to(dev), P, ids.shape[1] - P)
