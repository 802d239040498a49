"""Guide: hints where every rollout fails, trained as if the hint were absent (docs/methods.md §3).

Nath et al., "Adaptive Guidance Accelerates Reinforcement Learning of Reasoning Models"
(arXiv 2506.13923), Guide-GRPO as the authors' code does it:

1. n rollouts per prompt q from π_old(·|q);
2. if **all n fail** (``all_fail``) and q has a hint h, n new rollouts from the hinted prompt
   (``hint_prompt``: a template over {prompt} and {hint}) **replace** the group;
3. groups still all-correct or all-wrong are dropped (dynamic sampling, as for the baseline);
4. every sample is scored **without** the hint: for hinted rows the per-token ratio is
   r_t = π_θ(o_t | q, o_<t) / π_old(o_t | q, h, o_<t), shaped r̃ = r/(r+γ) with γ the 0.9-quantile
   of the hinted ratios in the micro-batch (detached, ≥ 1e-4); hinted tokens are **not
   clipped**, plain tokens use the usual clip (``guided_surrogate``).

Pure functions over tensors and numbers; the loop is paced/train/rl.py (``rl.guide.enabled: true``).

Shaping strategies (``SHAPINGS``; the paper's is ``percentile``; the others are our switches,
docs/methods.md leaves them [open]):
    percentile  r̃ = r / (r + γ),  γ = quantile_q(hinted ratios of the micro-batch), q = 0.9
    constant    r̃ = r / (r + γ),  γ a fixed number (default 1: r̃ = 1/2 at r = 1)
    power       r̃ = r^κ,          κ in (0, 1]: compresses the ratio's range without bounding it
    none        r̃ = r             the raw, unclipped importance ratio (an ablation)
Deviations from the paper: γ's floor 1e-4 and the quantile are taken over the hinted rows' valid
completion tokens only (padding and plain rows never enter it); a micro-batch without hinted
tokens has γ = NaN and its plain rows are the ordinary clipped surrogate.
"""
from __future__ import annotations

import string

import torch
from torch import Tensor

from .rl_losses import clipped_surrogate

GAMMA_FLOOR = 1e-4


def hint_prompt(template: str, prompt: str, hint: str) -> str:
    """The hinted prompt: ``template`` with {prompt} and {hint} filled in (e.g. "{prompt}({hint})",
    problem + hint text; "{hint}" alone when the hint field holds a whole alternative prompt)."""
    return template.format(prompt=prompt, hint=hint)


def template_fields(template: str) -> set[str]:
    """The field names a format string fills in ("{hint:_<16}|{prompt}" -> {"hint", "prompt"})."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"{template!r} is not a format string: {e}") from None


def check_hint_template(template: str) -> None:
    """ValueError unless ``template`` uses {hint} and no field other than {prompt} and {hint}."""
    fields = template_fields(template)
    if "hint" not in fields:
        raise ValueError(f"{template!r} does not use {{hint}}")
    if fields - {"prompt", "hint"}:
        raise ValueError(f"{template!r} uses {sorted(fields - {'prompt', 'hint'})}: only {{prompt}} and "
                         f"{{hint}} are filled in")


def all_fail(correct, n: int) -> Tensor:
    """(G,) bool: True where every one of a group's n rollouts failed (the Guide trigger).

    ``correct`` (N,) bools or 0/1 (N = G·n, grouped contiguously): the verifier's verdicts.
    """
    c = torch.as_tensor(correct, dtype=torch.bool).reshape(-1)  # (N,)
    if n < 1 or c.numel() % n:
        raise ValueError(f"all_fail: {c.numel()} verdicts is not a whole number of groups of n={n}")
    return ~c.view(-1, n).any(-1)                                # (G,)


def replace_groups(plain, hinted, stuck: list[int], n: int):
    """Guide's replacement: group ``stuck[k]`` of ``plain`` (N rows, groups of n contiguous rows:
    a list, or a tensor with N rows) becomes group k of ``hinted``; a new list / tensor."""
    out = plain.clone() if isinstance(plain, Tensor) else list(plain)
    for k, j in enumerate(stuck):
        out[j * n:(j + 1) * n] = hinted[k * n:(k + 1) * n]
    return out


# ---------------------------------------------------------------------------------------------
# The ratio and its shaping
# ---------------------------------------------------------------------------------------------
def _rational(ratio: Tensor, gamma: Tensor, power: float) -> Tensor:
    return ratio / (ratio + gamma)


SHAPINGS = {
    "percentile": _rational,
    "constant": _rational,
    "power": lambda ratio, gamma, power: ratio.pow(power),
    "none": lambda ratio, gamma, power: ratio,
}


def guided_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, shaping: str = "percentile",
                 quantile: float = 0.9, gamma: float = 1.0, power: float = 0.5
                 ) -> tuple[Tensor, Tensor, float]:
    """The hint-corrected importance ratio and its shaping, per token.

        r_t = exp(log π_θ(o_t|q, o_<t) − log π_old(o_t|q, h, o_<t))          (N, T)
        r̃_t = SHAPINGS[shaping](r_t, γ, κ)

    ``logp`` (N, T): current log-probs under the plain prompt (differentiable); ``old_logp``
    (N, T): the sampler's log-probs under the hinted prompt (detached here); ``mask`` (N, T) 1 on
    the tokens γ is taken over (the hinted rows' completion tokens). γ: the ``quantile`` of the
    detached ratios under ``mask`` for "percentile" (≥ 1e-4; reported NaN, and 1 used, if the mask
    is empty), ``gamma`` for "constant", unused (NaN) for "power" and "none". Returns (r̃, r, γ),
    r and r̃ (N, T).
    """
    if shaping not in SHAPINGS:
        raise ValueError(f"guided_ratio: shaping must be one of {list(SHAPINGS)}, got {shaping!r}")
    ratio = torch.exp(logp - old_logp.detach())                  # (N, T)
    if shaping == "percentile":
        valid = ratio.detach()[mask != 0]                        # (M,)
        g = float(torch.quantile(valid.float(), quantile).clamp(min=GAMMA_FLOOR)) if valid.numel() \
            else float("nan")
    elif shaping == "constant":
        g = float(gamma)
    else:
        g = float("nan")
    g_used = torch.tensor(g if g == g else 1.0, dtype=ratio.dtype)  # NaN γ (no hinted tokens): 1
    return SHAPINGS[shaping](ratio, g_used, power), ratio, g


def guided_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, hinted: Tensor, mask: Tensor,
                     shaping: str = "percentile", quantile: float = 0.9, gamma: float = 1.0,
                     power: float = 0.5, epsilon_low: float = 0.2, epsilon_high: float | None = None
                     ) -> tuple[Tensor, Tensor, dict]:
    """Guide's per-token loss for a micro-batch that mixes plain and hinted rows.

        plain rows  ℓ_t = −min(ρ_t A, clip(ρ_t, 1−ε_low, 1+ε_high) A)     (clipped_surrogate)
        hinted rows ℓ_t = −r̃_t A                                           (no clip)

    ``hinted`` (N,) bool; ``old_logp`` (N, T) holds π_old(o|q, o_<t) on plain rows and
    π_old(o|q, h, o_<t) on hinted ones; ``advantages`` (N, 1) or (N, T); ``mask`` (N, T) the
    completion tokens (γ is taken over mask · hinted). Returns (ℓ (N, T), clipped (N, T) bool —
    never True on hinted rows, stats: gamma, and on hinted tokens the mean log-ratio, the mean
    shaped ratio and the token count).
    """
    h = hinted.to(torch.bool)[:, None]                          # (N, 1)
    # each branch sees ratio 1 on the other branch's rows: no overflow there, so no 0 · inf = NaN
    # in the gradient torch.where passes back through the branch it did not select
    stay = logp.detach()
    plain_loss, clipped = clipped_surrogate(logp, torch.where(h, stay, old_logp), advantages, epsilon_low,
                                            epsilon_high)
    hmask = (mask != 0) & h                                      # (N, T)
    shaped, ratio, g = guided_ratio(logp, torch.where(h, old_logp, stay), hmask, shaping, quantile, gamma, power)
    hinted_loss = -shaped * advantages.detach()                  # (N, T)
    per_token = torch.where(h, hinted_loss, plain_loss)          # (N, T)
    n = int(hmask.sum())
    stats = {"gamma": g, "hinted_tokens": n}
    if n:
        stats["log_ratio"] = float(ratio.detach().log()[hmask].mean())
        stats["shaped_ratio"] = float(shaped.detach()[hmask].mean())
    return per_token, clipped & ~h, stats
