"""Token-level losses: SFT's cross-entropy and the full-vocabulary distillation losses
(docs/methods.md §1, "L_distill").

Every loss takes student and teacher logits (B, T, V) at the *same* positions (the caller has
already shifted them: position t predicts token t+1) and returns the per-token loss (B, T), with
no masking and no reduction; ``masked_mean`` reduces over each sequence's response tokens.

Conventions shared by all losses:
- Softmaxes are computed in fp32 (fp64 inputs stay fp64) as ``log_softmax(logits / T)``; no
  T² factor is applied (as TRL's GKD loss). Teacher logits are used as given: detach them (or
  compute them under ``torch.no_grad``) in the caller; ``chunked_token_loss`` does this itself.
- -inf logits (masked vocabulary entries) are allowed: an entry that has probability 0 under the
  distribution an expectation is taken over contributes exactly 0 (never 0·log 0 = NaN), also in
  the gradient. KL(p ‖ q) is +inf where p puts mass on an entry q masks out (mathematically so).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


IGNORE = -100   # the label of a position no loss is taken at (prompt, padding), as Hugging Face's


def sft_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Token-mean next-token cross-entropy over labelled positions; returns (loss, n_tokens)."""
    logits = logits[:, :-1].float()                                           # (B, T-1, V)
    targets = labels[:, 1:]                                                   # (B, T-1)
    n = int((targets != IGNORE).sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    return loss / max(n, 1), n


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _upcast(x: Tensor) -> Tensor:
    """x in at least fp32 (bf16/fp16 -> fp32; fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """log_softmax(logits / T) in at least fp32."""
    return F.log_softmax(_upcast(logits) / temperature, dim=-1)  # (B, T, V)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) over the last axis, with 0 · anything := 0.

    Where p_v = 0 the difference is replaced by 0 *before* the product, so -inf − (-inf) = NaN
    never reaches the value or the gradient.
    """
    p = logp.exp()                                               # (B, T, V)
    diff = (logp - logq).masked_fill(p == 0, 0.0)                # (B, T, V)
    return (p * diff).sum(-1)                                    # (B, T)


# ---------------------------------------------------------------------------------------------
# Losses (pure functions, all (B, T, V) x 2 -> (B, T))
# ---------------------------------------------------------------------------------------------
def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Forward KL per token: KL(p_T ‖ p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v)).

    docs/methods.md §1: PACED stage 1 (distillation on teacher-generated responses, "mode
    coverage"). p = softmax(logits / temperature).
    """
    return _kl(_log_probs(teacher_logits, temperature), _log_probs(student_logits, temperature))


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Reverse KL per token: KL(p_S ‖ p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v)).

    docs/methods.md §1: PACED stage 2 (on student-generated responses, "consolidation").
    """
    return _kl(_log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature))


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> Tensor:
    """Generalised Jensen-Shannon divergence per token, TRL GKD convention.

        m = β p_T + (1 − β) p_S
        JSD_β = β KL(p_T ‖ m) + (1 − β) KL(p_S ‖ m)          for 0 < β < 1
        JSD_0 = KL(p_T ‖ p_S) (forward),  JSD_1 = KL(p_S ‖ p_T) (reverse)

    GKD (Agarwal et al., arXiv 2306.13649, Eq. 1) with P = teacher, Q = student, as computed by
    TRL's ``GKDTrainer.generalized_jsd_loss`` since huggingface/trl PR #3043 (mixture
    ``beta * teacher + (1 - beta) * student``, endpoints special-cased). docs/methods.md §1 asks for
    this convention (0 = forward, 1 = reverse). β = 0.5 is the symmetric JSD, ≤ log 2.
    Note: the interior formula tends to 0 at both ends (JSD_β ≈ β·KL(p_T‖p_S) as β → 0 and
    ≈ (1−β)·KL(p_S‖p_T) as β → 1), so the loss jumps at β = 0 and β = 1 exactly as TRL's does.
    Deviations: none in the value; the mixture's log is taken with logsumexp in log space and
    entries masked (-inf) in both models are kept out of the gradient (TRL would give NaN).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd: beta must lie in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    logp_s = _log_probs(student_logits, temperature)             # (B, T, V)
    logp_t = _log_probs(teacher_logits, temperature)             # (B, T, V)
    both_masked = torch.isneginf(logp_s) & torch.isneginf(logp_t)  # (B, T, V)
    stacked = torch.stack([logp_t + math.log(beta),
                           logp_s + math.log1p(-beta)])          # (2, B, T, V)
    log_m = torch.logsumexp(stacked.masked_fill(both_masked, 0.0), dim=0)  # (B, T, V)
    log_m = log_m.masked_fill(both_masked, float("-inf"))        # (B, T, V)
    return beta * _kl(logp_t, log_m) + (1.0 - beta) * _kl(logp_s, log_m)


def akl_weights(student_logits: Tensor, teacher_logits: Tensor, mu: float = 0.5,
                temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """AKL's detached head/tail weights (w_head, w_tail), each (B, T), w_head + w_tail = 1.

    Sort the vocabulary by p_T, descending; the head is the top tokens whose cumulative teacher
    mass is ≤ μ, plus always the top-1 token; the tail is the rest.
    g_head = Σ_head |p_T − p_S|, g_tail = Σ_tail |p_T − p_S|, w = g / (g_head + g_tail).
    Deviations: where g_head + g_tail = 0 (p_S = p_T, so both KLs are 0) the weights are ½, ½
    instead of the authors' 0/0 = NaN; masked (-inf) entries have probability 0 instead of being
    reset to logit 0 as the authors' code does before its softmax.
    """
    with torch.no_grad():
        p_t = _log_probs(teacher_logits, temperature).exp()      # (B, T, V)
        p_s = _log_probs(student_logits, temperature).exp()      # (B, T, V)
        p_t_sorted, order = p_t.sort(dim=-1, descending=True)    # (B, T, V)
        gap = (p_t_sorted - p_s.gather(-1, order)).abs()         # (B, T, V)
        head = p_t_sorted.cumsum(-1) <= mu                       # (B, T, V)
        head[..., 0] = True
        g_head = (gap * head).sum(-1)                            # (B, T)
        g_tail = (gap * ~head).sum(-1)                           # (B, T)
        total = g_head + g_tail                                  # (B, T)
        w_head = torch.where(total > 0, g_head / total.clamp_min(torch.finfo(total.dtype).tiny),
                             torch.full_like(total, 0.5))        # (B, T)
    return w_head, 1.0 - w_head


def akl(student_logits: Tensor, teacher_logits: Tensor, mu: float = 0.5,
        temperature: float = 1.0) -> Tensor:
    """Adaptive KL per token: w_head · KL(p_T ‖ p_S) + w_tail · KL(p_S ‖ p_T).

    Wu et al., "Rethinking Kullback-Leibler Divergence in Knowledge Distillation for Large
    Language Models", COLING 2025 (arXiv 2404.02657): FKL focuses on the head of the teacher's
    distribution and RKL on the tail early in training, so each is weighted by the share of the
    student-teacher gap that lies in its part; weights from ``akl_weights`` (detached). Matched
    to the authors' ``AKL.py`` (github.com/wutaiqiang/LLM_KD_AKL: ``get_ratio``/``get_kl``):
    descending sort of p_T, tail = cumulative mass > μ with the top-1 token always in the head,
    |p_T − p_S| gaps, μ = 0.5 default, no gradient through the weights.
    Deviations: temperature is applied to both logits before everything (the authors use none;
    T = 1 reproduces them); the two corner cases listed in ``akl_weights``.
    """
    w_head, w_tail = akl_weights(student_logits, teacher_logits, mu, temperature)  # (B, T) x 2
    logp_s = _log_probs(student_logits, temperature)             # (B, T, V)
    logp_t = _log_probs(teacher_logits, temperature)             # (B, T, V)
    return w_head * _kl(logp_t, logp_s) + w_tail * _kl(logp_s, logp_t)


DISTILL_LOSSES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": generalized_jsd,
                  "akl": akl}

# Whose responses a loss is computed on when a stage says "auto" (the paper's pairing).
DEFAULT_RESPONSES = {"forward_kl": "teacher", "akl": "teacher", "reverse_kl": "student", "jsd": "student"}


def loss_kwargs(loss_type: str, temperature: float = 1.0, beta: float = 0.5, mu: float = 0.5) -> dict:
    """The keyword arguments ``DISTILL_LOSSES[loss_type]`` takes beyond the two logits."""
    kw = {"temperature": temperature}
    if loss_type == "jsd":
        kw["beta"] = beta
    if loss_type == "akl":
        kw["mu"] = mu
    return kw


# ---------------------------------------------------------------------------------------------
# Reduction and memory-bounded evaluation
# ---------------------------------------------------------------------------------------------
def masked_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean of each row's masked tokens: Σ_t m_t ℓ_t / Σ_t m_t, (B, T) -> (B,); 0 for empty rows.

    ``mask`` is bool or 0/1 (float weights work too). Unmasked entries never leak into the
    result, even when they are inf or NaN.
    """
    m = mask.to(per_token.dtype)                                 # (B, T)
    num = torch.where(m != 0, per_token * m, torch.zeros_like(per_token)).sum(-1)  # (B,)
    den = m.sum(-1)                                              # (B,)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(num))


def chunked_token_loss(student_hidden: Tensor, teacher_hidden: Tensor, student_head, teacher_head,
                       loss_fn, chunk_size: int = 256, with_agreement: bool = False,
                       checkpoint_above_bytes: int = 32 * 2 ** 20, **loss_kw):
    """Per-token loss (B, T) from hidden states, with O(B · chunk · V) logits memory.

    ``loss_fn(student_logits, teacher_logits, **loss_kw)`` is any position-wise loss above; the
    heads map (B, t, H) -> (B, t, V) (the models' lm_head). Positions are processed in chunks of
    ``chunk_size``: each chunk's logits are upcast to fp32 and fed to the loss inside
    ``torch.utils.checkpoint`` (non-reentrant), so no chunk's (B, chunk, V) logits survive the
    forward; the backward recomputes them one chunk at a time. The teacher side is detached and
    run under no_grad. The same idea as Liger's / torchtune's chunked output-projection losses.
    When the whole (B, T, V) fp32 logits tensor is at most ``checkpoint_above_bytes`` (32 MiB by
    default) nothing is checkpointed: the recomputation would cost more than the memory it saves.
    ``with_agreement=True`` also returns the per-token argmax agreement of the two models (B, T)
    (bool), computed from the same logits (no extra head pass).
    Deviations: the head matmul runs in the head's own dtype and only its output is upcast (a
    true fp32 matmul would need an fp32 copy of the V × H head weights).
    Result equals ``loss_fn(student_head(h_S), teacher_head(h_T).detach())`` up to float
    rounding, gradients too.
    """
    if chunk_size < 1:
        raise ValueError(f"chunked_token_loss: chunk_size must be >= 1, got {chunk_size}")
    teacher_hidden = teacher_hidden.detach()

    def piece(h_s: Tensor, h_t: Tensor) -> tuple[Tensor, Tensor]:
        s_logits = _upcast(student_head(h_s))                     # (B, c, V)
        with torch.no_grad():
            t_logits = _upcast(teacher_head(h_t))                 # (B, c, V)
            agree = s_logits.argmax(-1) == t_logits.argmax(-1)    # (B, c)
        return loss_fn(s_logits, t_logits, **loss_kw), agree     # (B, c) x 2

    B, T = student_hidden.shape[:2]
    vocab = getattr(student_head, "out_features", None)
    if vocab is None:                                            # a plain callable: probe it
        with torch.no_grad():
            vocab = student_head(student_hidden[:1, :1]).shape[-1]
    ckpt = torch.is_grad_enabled() and B * T * vocab * 4 > checkpoint_above_bytes
    outs, agrees = [], []
    for start in range(0, T, chunk_size):
        h_s = student_hidden[:, start:start + chunk_size]        # (B, c, H)
        h_t = teacher_hidden[:, start:start + chunk_size]        # (B, c, H)
        out, agree = checkpoint(piece, h_s, h_t, use_reentrant=False) if ckpt else piece(h_s, h_t)
        outs.append(out)
        agrees.append(agree)
    if not outs:                                                 # T = 0
        loss = _upcast(student_hidden.new_zeros(student_hidden.shape[:2]))
        agreement = torch.zeros(student_hidden.shape[:2], dtype=torch.bool, device=student_hidden.device)
    else:
        loss, agreement = torch.cat(outs, dim=1), torch.cat(agrees, dim=1)  # (B, T) x 2
    return (loss, agreement) if with_agreement else loss
