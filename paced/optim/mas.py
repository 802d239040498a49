"""Memory Aware Synapses, a continual-learning baseline CLASSP is compared with
(docs/methods.md §4, arXiv 2405.09637; MAS: Aljundi et al. 2018, arXiv 1711.09601).

Like EWC, a quadratic penalty around the weights of the last task, but each weight's importance
is how much the output moves with it (no labels needed), not a Fisher of the loss. Conventions
of Avalanche's ``MASPlugin`` (avalanche/training/plugins/mas.py), for a model f:

    Ω_new      = (1/B) Σ_b |∂ (mean_{x in b} ‖f(x)‖₂) / ∂θ|   over the B mini-batches of the task
    Ω          <- α Ω + (1 − α) Ω_new                       after every task, from Ω = 0
    θ*         = the weights at the end of the latest task   (the anchor)
    penalty(θ) = λ/2 · Σ_i Ω_i (θ_i − θ*_i)²

Deviations: relative to Aljundi et al., Ω is Avalanche's (and FACIL's): the absolute gradient of
each mini-batch's mean ℓ2 output norm, not the mean over examples of the magnitude of each
example's gradient of the squared norm; successive tasks are combined by the α rule above; the
penalty has Avalanche's 1/2. Relative to Avalanche: no constant factor len(batch) on Ω (the
number of fields of the batch tuple, absorbed into λ); only parameters with ``requires_grad`` get
an Ω and an anchor; gradients come from ``torch.autograd.grad`` (existing ``.grad`` fields are
left untouched); the model's train/eval mode is the caller's (Avalanche sets train mode; the
continual runner consolidates in train mode, right after training); no mini-batches raise.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .ewc import ewc_penalty


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def mas_importance(model: nn.Module, batches: Iterable, output_fn: Callable) -> dict[str, torch.Tensor]:
    """Ω[name] = (1/B) Σ_b |∂ mean_x ‖output_fn(model, batch_b)‖₂ / ∂θ_name|, per named parameter
    with requires_grad.

    ``output_fn(model, batch)`` returns the (B, C) outputs of one mini-batch; the norm is over C,
    the mean over B. Ω has each parameter's shape, dtype and device. Raises ValueError if
    ``batches`` is empty.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in named}
    count = 0
    for batch in batches:
        out = output_fn(model, batch)                                           # (B, C)
        grads = torch.autograd.grad(out.norm(dim=1).mean(), [p for _, p in named])
        for (n, _), g in zip(named, grads):
            total[n] += g.abs()
        count += 1
    if count == 0:
        raise ValueError("mas_importance: no mini-batches given")
    return {n: t / count for n, t in total.items()}


def mas_penalty(model: nn.Module, importance: Mapping[str, torch.Tensor],
                anchor: Mapping[str, torch.Tensor], lam: float) -> torch.Tensor:
    """λ/2 · Σ_i Ω_i (θ_i − θ*_i)², differentiable in the model's parameters; a 0 tensor when
    there is no anchor yet (``ewc_penalty`` with one (Ω, θ*) pair and weight λ/2)."""
    return ewc_penalty(model, [(importance, anchor)] if anchor else [], lam / 2)


def _check(lam: float, alpha: float) -> None:
    if not lam >= 0:
        raise ValueError(f"MAS: invalid lam={lam} (need lam >= 0)")
    if not 0 <= alpha <= 1:
        raise ValueError(f"MAS: invalid alpha={alpha} (need 0 <= alpha <= 1)")


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------
class MAS:
    """Holds Ω and θ* and computes the MAS penalty (conventions: module docstring). The same
    interface as ``EWC``: consolidate / penalty / memory_bytes, but ``consolidate`` takes the
    model's outputs, not its loss:

        mas = MAS(lam=10.0, alpha=0.5)
        for task in tasks:
            for batch in task:  loss = task_loss(model, batch) + mas.penalty(model); ...
            mas.consolidate(model, task_batches, task_outputs)
    """

    def __init__(self, lam: float, alpha: float):
        _check(lam, alpha)
        self.lam, self.alpha = float(lam), float(alpha)
        self.importance: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def consolidate(self, model: nn.Module, batches: Iterable, output_fn: Callable) -> None:
        """After a task: Ω <- α Ω + (1 − α) mas_importance(model, batches, output_fn), θ* = θ."""
        new = mas_importance(model, batches, output_fn)
        self.importance = {n: self.alpha * self.importance.get(n, 0.0) + (1 - self.alpha) * new[n]
                           for n in new}
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in new}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """λ/2 · Σ_i Ω_i (θ_i − θ*_i)²; a 0 tensor before any ``consolidate``."""
        return mas_penalty(model, self.importance, self.anchor, self.lam)

    def memory_bytes(self) -> int:
        """Bytes held in Ω and θ* (2 × the parameters' bytes once consolidated)."""
        return sum(t.numel() * t.element_size() for d in (self.importance, self.anchor) for t in d.values())


__all__ = ["MAS", "mas_importance", "mas_penalty"]
