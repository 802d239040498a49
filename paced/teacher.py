"""The frozen teacher's side of distillation: its hidden states, and two caches of them.

A frozen teacher computes the same thing every time it sees the same input, and PACED draws
problems from a fixed pool again and again, so two kinds of teacher work repeat:
- off-policy on greedy teacher responses, the whole sequence repeats: ``TeacherHiddenCache``
  keeps the final hidden states on the response (R_i, H) per problem;
- on-policy (student responses), the prompt repeats: ``TeacherPromptCache`` keeps the prompt's
  KV cache and its last hidden state per problem, and the teacher then runs on the response
  tokens only.
Both stop storing when their byte budget is spent and fall back to the full forward for any
batch they cannot serve whole, and both compute each entry from the problem alone (batch 1,
no padding), so what they return does not depend on which problems shared a batch: a resumed
run rebuilds identical entries. The head is applied later, in chunks, by the loss.
"""
from __future__ import annotations

import copy

import torch

from .models import check_logits_head, load_model_and_tokenizer
from .rollout import _cache_kw, hybrid_cache_layers


def load_teacher(path: str, dtype: str, student, tok):
    """The frozen teacher (eval mode, no gradients): a copy of the starting student for ``path``
    "self" (self-distillation), else the model directory or built-in name; vocabularies and both
    logits heads checked."""
    teacher, t_tok = (copy.deepcopy(student), tok) if path == "self" else load_model_and_tokenizer(path, dtype)
    check_vocab(tok, t_tok, student, teacher)
    check_logits_head(student, "student")
    check_logits_head(teacher, "teacher")
    return teacher.eval().requires_grad_(False)


def check_vocab(student_tok, teacher_tok, student_model, teacher_model) -> None:
    """Teacher and student must share one vocabulary: same size and the same token -> id map."""
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    s_size = student_model.get_output_embeddings().weight.shape[0]
    t_size = teacher_model.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab or s_size != t_size:
        only_s = sorted(set(s_vocab) - set(t_vocab))[:5]
        only_t = sorted(set(t_vocab) - set(s_vocab))[:5]
        moved = sorted(k for k in set(s_vocab) & set(t_vocab) if s_vocab[k] != t_vocab[k])[:5]
        raise ValueError(
            "teacher and student vocabularies differ: token-level KL needs one vocabulary. "
            f"student {len(s_vocab)} tokens / {s_size} logits, teacher {len(t_vocab)} / {t_size}; "
            f"only in student: {only_s}; only in teacher: {only_t}; different ids: {moved}")


def response_hidden(model, ids, mask, pos, P: int, R: int) -> torch.Tensor:
    """Final hidden states at the positions that predict the R response tokens: (B, R, H).

    Called through the (possibly DDP-wrapped) model so that DDP sees the forward; only the last
    position's logits are computed (``logits_to_keep=1``): the loss applies the head in chunks.
    """
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states[-1][:, P - 1: P + R - 1]


def backbone(model):
    """The transformer body without the head (e.g. LlamaModel; its output is normalised), or None."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    return None if body is None or body is model else body


@torch.no_grad()
def teacher_hidden(teacher, ids, mask, pos, P: int, R: int) -> torch.Tensor:
    """The frozen teacher's final hidden states on the response positions (B, R, H), no grad.

    Runs the backbone alone, so neither logits nor every layer's hidden states are materialised.
    """
    body = backbone(teacher)
    if body is None:
        return response_hidden(teacher, ids, mask, pos, P, R)
    h = body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    return h[:, P - 1: P + R - 1]                                            # (B, R, H)


def _fill(cache, ids: list[str], compute) -> bool:
    """Store ``compute(i)`` (a tensor or a tuple of tensors) for every id not yet in
    ``cache.entries`` while ``cache.free`` bytes last; the first entry that does not fit ends
    the filling for good. True when every id of the batch is cached."""
    for i in ids:
        if i not in cache.entries and cache.free > 0:
            value = compute(i)
            size = sum(t.nbytes for t in (value if isinstance(value, tuple) else (value,)))
            if size <= cache.free:
                cache.entries[i] = value
                cache.free -= size
            else:
                cache.free = 0                                               # full: stop trying
    return bool(ids) and all(i in cache.entries for i in ids)


class TeacherHiddenCache:
    """problem id -> the teacher's hidden states on its (fixed, greedy) response, (R_i, H).

    Entries are computed per problem (batch 1) on first sight, while the budget lasts; a batch
    is served from the cache only when every problem in it is cached, otherwise the teacher
    runs on the whole batch.
    """

    def __init__(self, max_bytes: int):
        self.entries: dict[str, torch.Tensor] = {}
        self.free = max_bytes

    def __call__(self, teacher, ids: list[str], prompts: list[list[int]], responses: list[list[int]],
                 t_batch, R: int) -> torch.Tensor:
        device = t_batch[0].device
        seq = dict(zip(ids, zip(prompts, responses)))
        if not _fill(self, ids, lambda i: teacher_hidden(teacher, *_single(*seq[i], device),
                                                         len(seq[i][1]))[0]):  # (R_i, H)
            return teacher_hidden(teacher, *t_batch, R)                      # (B, R, H)
        first = self.entries[ids[0]]
        h = first.new_zeros(len(ids), R, first.shape[-1])                    # (B, R, H)
        for b, i in enumerate(ids):
            h[b, :len(self.entries[i])] = self.entries[i]
        return h


class TeacherPromptCache:
    """problem id -> the teacher's KV cache on its prompt and the prompt's last hidden state.

    The teacher then runs on the response tokens only, attending to the cached prompt: the
    position that predicts the first response token is the prompt's last one, whose hidden
    state is stored (H,); the other R - 1 come from the response pass. An entry holds every
    layer's keys and values as one tensor (L, 2, kv_heads, P_i, d); a batch left-pads them into
    one (B, L, 2, kv_heads, P, d) tensor with B copies, then hands each layer's slices to a
    DynamicCache. Deviation from a full forward: none in the math; float rounding may differ (a
    different split of the same attention), as between any two batchings.
    """

    def __init__(self, max_bytes: int):
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.free = max_bytes

    @torch.no_grad()
    def _prefill(self, body, prompt: list[int], device):
        from transformers import DynamicCache

        cache = DynamicCache()
        ids = torch.tensor([prompt], device=device)                          # (1, P_i)
        out = body(input_ids=ids, use_cache=True, **{_cache_kw(body): cache})
        kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]])
                          for layer in cache.layers])                        # (L, 2, kvh, P_i, d)
        return kv, out.last_hidden_state[0, -1]                              # (H,)

    @torch.no_grad()
    def __call__(self, teacher, ids: list[str], prompts: list[list[int]], responses: list[list[int]],
                 t_batch, R: int) -> torch.Tensor:
        from transformers import DynamicCache

        body = backbone(teacher)
        device = t_batch[0].device
        if (body is None or not hasattr(DynamicCache(), "layers")             # unsupported model,
                or hybrid_cache_layers(teacher)):                             # or a hybrid one
            return teacher_hidden(teacher, *t_batch, R)
        prompt_of = dict(zip(ids, prompts))
        if not _fill(self, ids, lambda i: self._prefill(body, prompt_of[i], device)):
            return teacher_hidden(teacher, *t_batch, R)                      # (B, R, H)
        B, P = len(ids), max(map(len, prompts))
        kv0 = self.entries[ids[0]][0]
        kv = kv0.new_zeros(B, *kv0.shape[:-2], P, kv0.shape[-1])             # (B, L, 2, kvh, P, d)
        for b, i in enumerate(ids):
            e = self.entries[i][0]
            kv[b, ..., P - e.shape[-2]:, :] = e
        cache = DynamicCache()
        for layer in range(kv.shape[1]):
            cache.update(kv[:, layer, 0], kv[:, layer, 1], layer)            # (B, kvh, P, d) x 2
        last = torch.stack([self.entries[i][1] for i in ids])[:, None]       # (B, 1, H)
        if R == 1:
            return last
        resp = torch.zeros(B, R - 1, dtype=torch.long)                       # (B, R - 1) right-padded
        mask = torch.zeros(B, P + R - 1, dtype=torch.long)                   # (B, P + R - 1)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            n = len(r) - 1                                                   # the last token predicts nothing
            resp[b, :n] = torch.tensor(r[:n], dtype=torch.long)
            mask[b, P - len(p):P + n] = 1
        pos = torch.tensor([len(p) for p in prompts])[:, None] + torch.arange(R - 1)  # (B, R - 1)
        out = body(input_ids=resp.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   use_cache=True, **{_cache_kw(body): cache}).last_hidden_state  # (B, R - 1, H)
        return torch.cat([last, out], dim=1)                                 # (B, R, H)


def _single(prompt: list[int], response: list[int], device):
    """One unpadded sequence as the (ids, mask, pos, P) that ``teacher_hidden`` takes."""
    ids = torch.tensor([prompt + response], device=device)                   # (1, P + R)
    return ids, torch.ones_like(ids), torch.arange(ids.shape[1], device=device)[None], len(prompt)
