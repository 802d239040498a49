"""One sampling function for every trainer: batched, KV-cached, left-padded, n per prompt.

    rollouts = sample(model, prompt_ids, SamplingParams(n=8, temperature=1.0, max_tokens=32),
                      eos_token_id=stop_token_ids(model, tok), pad_token_id=tok.pad_token_id)

The signature mirrors vLLM's ``LLM.generate(prompts=TokensPrompt..., SamplingParams(n, temperature,
top_p, top_k, max_tokens, seed))`` so that a vLLM backend can sit behind ``SAMPLERS`` without any
trainer changing: trainers pass token ids in and get a ``Rollouts`` of padded tensors back.

Shapes: N = len(prompt_ids) * n rows (grouped: row i belongs to prompt i // n), L = longest
completion in the result (<= max_tokens), B = rows in one sampler chunk, P = longest prompt.

``sample_logp`` is log softmax(logits / T) of the sampled token — the temperature-scaled
distribution *before* top-k / top-p truncation, i.e. exactly what a trainer's forward pass at
temperature T recomputes (with top_p = 1 and top_k = 0 it is the sampling distribution itself).
At T = 0 (greedy) it is the plain log softmax.

A row ends at the first of the stop tokens ``eos_token_id`` names (one id or a list: a chat model
ends its turn with e.g. ``<|im_end|>`` and may also emit ``<|endoftext|>``; the stop token is part
of the completion and its mask). Rows that end are dropped from the batch and from the KV cache as they finish, so a chunk
costs what its unfinished rows cost; Hugging Face ``generate`` keeps decoding finished rows.
At toy sizes a decode step costs framework overhead more than arithmetic, so the loop is kept
lean: it runs under ``torch.inference_mode`` (no autograd bookkeeping on any tensor), a prompt
sampled once is not copied, and tokens are written out once per stretch of steps between
compactions rather than once per step (about 15% off a 16-token sample on the demo's student;
the draws and log-probs are bit-identical to the step-by-step version).
"""
from __future__ import annotations

import functools
import inspect
import weakref

import torch

from .runlog import Progress
from .sampling import Rollouts, SamplingParams  # noqa: F401  (the samplers' types, re-exported)


def as_stop_list(eos_token_id) -> list[int]:
    """One stop id or a list of them -> a non-empty list of distinct ints, in order."""
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"sampler: eos_token_id must be a token id or a list of ids, got {eos_token_id!r}")
    return list(dict.fromkeys(ids))


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k set and outside the smallest top-p nucleus with -inf."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]        # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p                   # keep the token crossing p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _cache_kw(model) -> str:
    """transformers >= 5.x names the KV-cache argument ``cache``; older releases ``past_key_values``."""
    return _cache_kw_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_kw_of(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


_LAYER_KINDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_layer_kinds(model) -> set[str]:
    """The cache-layer classes transformers lays out for ``model`` ("DynamicLayer", "DynamicSliding-
    WindowLayer" for attention; other names for hybrid models' state-space / linear-attention
    layers); empty where this transformers cannot say. Remembered per model object."""
    if model not in _LAYER_KINDS:
        from transformers import DynamicCache
        try:
            kinds = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
        except Exception:  # older transformers: no config argument
            kinds = set()
        _LAYER_KINDS[model] = kinds
    return _LAYER_KINDS[model]


def hybrid_cache_layers(model) -> list[str]:
    """The cache-layer kinds of ``model`` that are not attention KV caches (a hybrid model's
    state-space / linear-attention layers): what neither the sampler nor the teacher's prompt
    cache can share, expand or compact. Empty for attention-only models."""
    return sorted(cache_layer_kinds(model) - {"DynamicLayer", "DynamicSlidingWindowLayer"})


def _select_cache(cache, idx: torch.Tensor) -> None:
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(idx)
    else:  # older transformers: legacy per-layer tensors
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[idx], layer.values[idx]


@torch.inference_mode()
def _sample_chunk(model, prompts: list[list[int]], repeats: list[int], params: SamplingParams,
                  eos: list[int], pad: int, gen: torch.Generator):
    """Decode ``repeats[i]`` samples of each distinct prompt ``prompts[i]``.

    Each prompt is prefilled once and its KV cache copied to its samples (U distinct prompts,
    B = sum(repeats) rows). Returns (ids, logp, mask, finished), each (B, T) or (B,), rows grouped
    by prompt in order.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    U, P, T = len(prompts), max(len(p) for p in prompts), params.max_tokens
    input_ids = torch.tensor([[pad] * (P - len(p)) + list(p) for p in prompts], device=device)  # (U, P)
    attn = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + T) for p in prompts],
                        device=device)                                    # (U, P + T), grows by views
    position_ids = (attn[:, :P].cumsum(-1) - 1).clamp(min=0)              # (U, P)
    filtering = params.top_k > 0 or params.top_p < 1.0
    stops = torch.tensor(eos, device=device)                              # (S,) stop-token ids

    # Without padding no mask is needed at all, which lets attention take its unmasked fast path.
    padded = any(len(p) < P for p in prompts)
    cache = DynamicCache()
    kv = {_cache_kw(model): cache}
    logits = model(input_ids=input_ids, attention_mask=attn[:, :P] if padded else None,
                   position_ids=position_ids, use_cache=True, logits_to_keep=1, **kv).logits[:, -1]
    pos = position_ids[:, -1:] + 1                                        # (U, 1) next position
    if any(r != 1 for r in repeats):                                      # (U, ...) -> (B, ...)
        expand = torch.arange(U, device=device).repeat_interleave(torch.tensor(repeats, device=device))
        _select_cache(cache, expand)
        logits, attn, pos = logits[expand], attn[expand], pos[expand]     # (B, V), (B, P + T), (B, 1)
    B = sum(repeats)
    out_ids = torch.full((B, T), pad, dtype=torch.long, device=device)
    out_logp = torch.zeros((B, T), device=device)
    rows = torch.arange(B, device=device)                                 # (b,) rows in the batch
    alive = torch.ones(B, dtype=torch.bool, device=device)                # (b,) not yet ended
    toks, logps, t0 = [], [], 0             # the current segment's steps (rows fixed within it)
    for t in range(T):
        logits = logits.float()                                           # (b, V)
        if params.temperature == 0:
            logp_all = logits.log_softmax(-1)
            tok = logits.argmax(-1)
        else:
            logp_all = (logits if params.temperature == 1 else logits / params.temperature).log_softmax(-1)
            probs = (filter_logits(logp_all, params.top_k, params.top_p).softmax(-1) if filtering
                     else logp_all.exp())
            tok = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(device)
        toks.append(tok)
        logps.append(logp_all.gather(-1, tok[:, None]).squeeze(-1))
        alive = alive & ~torch.isin(tok, stops)
        n_alive = int(alive.sum())
        last = t == T - 1 or n_alive == 0
        # Ended rows are dropped from the batch and the KV cache once they are a quarter of it:
        # compacting at every EOS would copy the whole cache at almost every step. Tokens are
        # written out per segment of steps between compactions (one copy, not one per step).
        if last or n_alive <= 0.75 * alive.numel():
            out_ids[rows, t0:t + 1] = torch.stack(toks, 1)                # (b, steps)
            out_logp[rows, t0:t + 1] = torch.stack(logps, 1)
            toks, logps, t0 = [], [], t + 1
            if last:
                break
            keep = alive.nonzero().squeeze(-1)
            _select_cache(cache, keep)
            rows, tok, attn, pos, alive = rows[keep], tok[keep], attn[keep], pos[keep], alive[keep]
        logits = model(input_ids=tok[:, None], attention_mask=attn[:, : P + t + 1] if padded else None,
                       position_ids=pos + t, use_cache=True, **kv).logits[:, -1]
    # A row ends at its first stop token (steps decoded after it, while the row waited for
    # compaction, are blanked); a row without one ran to T.
    is_eos = torch.isin(out_ids, stops)                                   # (B, T)
    finished = is_eos.any(-1)                                             # (B,)
    ends = torch.where(finished, is_eos.long().argmax(-1), T)             # (B,) first EOS, or T
    out_mask = (torch.arange(T, device=device) <= ends[:, None]).long()   # (B, T)
    out_ids = out_ids.masked_fill(out_mask == 0, pad)
    out_logp = out_logp.masked_fill(out_mask == 0, 0.0)
    return out_ids, out_logp, out_mask, finished


def sample(model, prompt_ids: list[list[int]], params: SamplingParams, *, eos_token_id: int | list[int],
           pad_token_id: int, batch_size: int = 256, progress: bool = False) -> Rollouts:
    """Draw ``params.n`` completions for every prompt (see the module docstring); a row ends at
    any of the stop tokens ``eos_token_id`` (an id or a list of ids)."""
    if not prompt_ids:
        raise ValueError("sample(): no prompts")
    stops = as_stop_list(eos_token_id)
    if hybrid := hybrid_cache_layers(model):
        raise ValueError(
            f"sampler: {type(model).__name__} keeps state-space / linear-attention states "
            f"({hybrid}): a hybrid model. paced's "
            f"sampler shares, expands and compacts attention KV caches only, so hybrid models are not "
            f"supported yet")
    n = params.n
    gen = torch.Generator().manual_seed(params.seed)
    was_training = model.training
    model.eval()
    # Work units (prompt, first sample, count) with prompts sorted by length so chunks pad
    # little, packed into chunks of at most batch_size rows; results are put back in order.
    units = [(i, j, min(n - j, batch_size))
             for i in sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
             for j in range(0, n, batch_size)]
    chunks, cur, rows = [], [], 0
    for u in units:
        if cur and rows + u[2] > batch_size:
            chunks.append(cur)
            cur, rows = [], 0
        cur.append(u)
        rows += u[2]
    chunks.append(cur)
    N, T = len(prompt_ids) * n, params.max_tokens
    ids = torch.full((N, T), pad_token_id, dtype=torch.long)
    logp, cmask = torch.zeros((N, T)), torch.zeros((N, T), dtype=torch.long)
    finished = torch.zeros(N, dtype=torch.bool)
    with Progress(len(chunks), "sampling", progress and len(chunks) > 1) as bar:
        for chunk in chunks:
            i_, l_, m_, f_ = _sample_chunk(model, [prompt_ids[i] for i, _, _ in chunk],
                                           [c for _, _, c in chunk], params, stops,
                                           pad_token_id, gen)
            where = torch.tensor([i * n + j + k for i, j, c in chunk for k in range(c)])
            ids[where], logp[where], cmask[where], finished[where] = i_.cpu(), l_.cpu(), m_.cpu(), f_.cpu()
            bar.update()
    model.train(was_training)
    L = max(int(cmask.sum(-1).max()), 1)
    return Rollouts(
        prompt_ids=[list(p) for p in prompt_ids],
        prompt_index=torch.arange(len(prompt_ids)).repeat_interleave(params.n),
        completion_ids=ids[:, :L], completion_mask=cmask[:, :L], sample_logp=logp[:, :L],
        finished=finished,
    )


# The rollout engines a command may name in ``engine.backend``; each takes token-id prompts and
# returns ``Rollouts`` with the signature of ``sample``.
def _vllm_sample(*args, **kwargs) -> Rollouts:
    from .vllm_engine import sample as vllm_sample   # lazy: importing paced never imports vllm
    return vllm_sample(*args, **kwargs)


SAMPLERS = {"hf": sample, "vllm": _vllm_sample}


def sync_weights(model, backend: str) -> float:
    """Push ``model``'s changed weights to the rollout engine now (hf samples from the model
    itself: nothing to push); seconds spent. vllm also syncs by itself before sampling."""
    if backend == "hf":
        return 0.0
    from .vllm_engine import sync_weights as vllm_sync
    return vllm_sync(model)["seconds"]
