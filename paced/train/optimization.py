"""Optimizer, learning-rate schedule and one update step: what every training loop shares.

``OPTIMIZERS[optim.name](params, lr, weight_decay, beta1, beta2, classp_p, classp_threshold,
classp_eps)`` and ``SCHEDULES[optim.lr_scheduler_type](frac) -> lr factor`` after the linear
warm-up are the choice points.
"""
from __future__ import annotations

import math

import torch

from ..optim import CLASSP

OPTIMIZERS = {
    "adamw": lambda params, lr, wd, b1, b2, *_: torch.optim.AdamW(params, lr=lr, betas=(b1, b2), weight_decay=wd),
    "sgd": lambda params, lr, wd, b1, b2, *_: torch.optim.SGD(params, lr=lr, momentum=b1, weight_decay=wd),
    "classp": lambda params, lr, wd, b1, b2, p, threshold, eps: CLASSP(params, lr=lr, p=p, threshold=threshold,
                                                                       eps=eps, weight_decay=wd),
}

# frac: the share of the post-warm-up steps done, 0 -> 1
SCHEDULES = {
    "constant": lambda frac: 1.0,
    "linear": lambda frac: 1.0 - frac,
    "cosine": lambda frac: 0.5 * (1.0 + math.cos(math.pi * frac)),
}


def make_optimizer(params, name: str, lr: float, weight_decay: float, beta1: float, beta2: float,
                   classp_p: float = 1.0, classp_threshold: float = 0.0, classp_eps: float = 1e-5):
    """``OPTIMIZERS[name]``; SGD takes ``beta1`` as its momentum."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name: unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, weight_decay, beta1, beta2, classp_p, classp_threshold, classp_eps)


def optimizer_from(params, o) -> torch.optim.Optimizer:
    """The optimizer an ``OptimCfg`` section names (its fields spelt out, no config inside)."""
    return make_optimizer(params, o.name, o.lr, o.weight_decay, o.beta1, o.beta2,
                          o.classp.p, o.classp.threshold, o.classp.eps)


def make_scheduler(optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then ``SCHEDULES[kind]`` over the rest of ``total``."""
    shape = SCHEDULES[kind]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return shape((step - warmup) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def update(accelerator, model, optimizer, scheduler, max_grad_norm: float) -> tuple[torch.Tensor, float]:
    """Clip the gradient norm (0: no clipping, norm nan), optimizer and scheduler step, zero the
    gradients; returns (grad norm before clipping, the lr this step used)."""
    grad_norm = (accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                 if max_grad_norm > 0 else torch.tensor(float("nan")))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr
