"""Elastic Weight Consolidation, the continual-learning baseline CLASSP is compared with
(docs/methods.md §4, arXiv 2405.09637; EWC: Kirkpatrick et al. 2017, arXiv 1612.00796).

Conventions of Avalanche's ``EWCPlugin`` (avalanche/training/plugins/ewc.py):

    F_t        = (1/B) Σ_b (∇_θ L_b(θ_t*))²        diagonal Fisher after task t: squared gradients
                                                  of the B mini-batch losses, averaged over batches
    θ*_t       = the weights at the end of task t (the anchor)
    penalty(θ) = λ · Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²  "separate": one (F_t, θ*_t) per past task
    online     : F <- decay · F_old + F_new, θ* <- the latest weights; penalty = λ Σ_i F_i (θ_i − θ*_i)²

The penalty has no 1/2: Avalanche adds ``ewc_lambda * Σ (imp * (p − p*)²).sum()`` to the loss,
so ``lam`` here is Avalanche's ``ewc_lambda`` and Kirkpatrick's λ/2 (their loss is
L + Σ λ/2 F (θ − θ*)²).

Deviations: relative to Kirkpatrick et al., the Fisher is the "empirical" one of mini-batch
gradients (Avalanche's), not of per-sample gradients with labels sampled from the model.
Relative to Avalanche: only parameters with ``requires_grad`` get a Fisher and an anchor;
gradients come from ``torch.autograd.grad`` (existing ``.grad`` fields are left untouched);
each module's train/eval mode is restored after the Fisher pass (Avalanche leaves the model in
eval mode); parameters whose shape changed since consolidation raise instead of being expanded;
``decay`` defaults to 1.0 and is only accepted as 1.0 in "separate" mode.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

FisherAnchor = tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]
MODES = ("separate", "online")


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def diagonal_fisher(model: nn.Module, batches: Iterable, loss_fn: Callable) -> dict[str, torch.Tensor]:
    """F[name] = (1/B) Σ_b (∂L_b/∂θ_name)², per named parameter with requires_grad.

    ``loss_fn(model, batch)`` returns the scalar loss of one mini-batch (mean over its
    examples, as Avalanche's criterion). The model runs in eval mode (Avalanche; no dropout),
    each module's previous mode is restored afterwards. A parameter the loss does not reach
    contributes 0 for that batch. F has each parameter's shape, dtype and device (accumulated
    in at least fp32). Raises ValueError if ``batches`` is empty.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros(p.shape, device=p.device, dtype=torch.promote_types(p.dtype, torch.float32))
           for n, p in named}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    n_batches = 0
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (n, _), g in zip(named, grads):
                if g is not None:
                    acc[n] += g.detach().to(acc[n].dtype).square()
            n_batches += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
    if n_batches == 0:
        raise ValueError("diagonal_fisher: no mini-batches given")
    return {n: (acc[n] / n_batches).to(p.dtype) for n, p in named}


def ewc_penalty(model: nn.Module, fishers_and_anchors: Iterable[FisherAnchor], lam: float) -> torch.Tensor:
    """λ · Σ_tasks Σ_i F_i (θ_i − θ*_i)², differentiable in the model's parameters.

    ``fishers_and_anchors``: (F, θ*) pairs of dicts keyed by parameter name. Parameters absent
    from a pair (added after that task) do not count (Avalanche). No 1/2 factor (Avalanche's
    ``ewc_lambda``). Returns a 0-dim fp32 (or wider) tensor, 0 when there is nothing to
    penalise, on the device of the model's first parameter.
    """
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device if params else torch.device("cpu")
    total = torch.zeros((), device=device)                        # fp32, as Avalanche
    for fisher, anchor in fishers_and_anchors:
        for name, f in fisher.items():
            theta = params.get(name)
            if theta is None:
                continue
            star = anchor[name]
            if f.shape != theta.shape or star.shape != theta.shape:
                raise ValueError(f"ewc_penalty: {name} has shape {tuple(theta.shape)}, but its "
                                 f"Fisher / anchor have {tuple(f.shape)} / {tuple(star.shape)}")
            f, star = f.to(theta.device), star.to(theta.device)
            total = total + (f * (theta - star).square()).sum()   # (*shape) -> ()
    return lam * total


def _check(lam: float, mode: str, decay: float) -> None:
    if not lam >= 0:
        raise ValueError(f"EWC: invalid lam={lam} (need lam >= 0)")
    if mode not in MODES:
        raise ValueError(f"EWC: mode must be one of {MODES}, got {mode!r}")
    if not decay >= 0:
        raise ValueError(f"EWC: invalid decay={decay} (need decay >= 0)")
    if mode == "separate" and decay != 1.0:
        raise ValueError("EWC: decay is used only in mode='online' (Avalanche's rule); "
                         f"got decay={decay} with mode='separate'")


# ---------------------------------------------------------------------------------------------
# The per-task store
# ---------------------------------------------------------------------------------------------
class EWC:
    """Holds the (F, θ*) of past tasks and computes the EWC penalty (conventions: module docstring).

    mode "separate": one (F_t, θ*_t) per consolidated task; "online": a single pair,
    F <- decay·F_old + F_new and θ* = the latest weights (parameters new in this task get
    F_new alone). Typical use:

        ewc = EWC(lam=100.0)
        for task in tasks:
            for batch in task:  loss = task_loss(model, batch) + ewc.penalty(model); ...
            ewc.consolidate(model, task_batches, task_loss)
    """

    def __init__(self, lam: float, mode: str = "separate", decay: float = 1.0):
        _check(lam, mode, decay)
        self.lam = float(lam)
        self.mode = mode
        self.decay = float(decay)
        self.tasks: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self.consolidations = 0

    def consolidate(self, model: nn.Module, batches: Iterable, loss_fn: Callable) -> None:
        """After a task: F = diagonal_fisher(model, batches, loss_fn), θ* = the current weights."""
        fisher = diagonal_fisher(model, batches, loss_fn)
        params = dict(model.named_parameters())
        anchor = {n: params[n].detach().clone() for n in fisher}
        if self.mode == "online" and self.tasks:
            old = self.tasks[0][0]
            fisher = {n: self.decay * old[n].to(f.device) + f if n in old else f
                      for n, f in fisher.items()}
            self.tasks = [(fisher, anchor)]
        else:
            self.tasks.append((fisher, anchor))
        self.consolidations += 1

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """lam · Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²; a 0 tensor before any ``consolidate``."""
        return ewc_penalty(model, self.tasks, self.lam)

    def memory_bytes(self) -> int:
        """Bytes held in the Fishers and anchors (2 × parameter bytes per stored task)."""
        return sum(t.numel() * t.element_size() for pair in self.tasks for d in pair
                   for t in d.values())

    def state_dict(self) -> dict:
        """Plain dicts / lists of tensors, str and float: safe for ``torch.load(weights_only=True)``."""
        return {"lam": self.lam, "mode": self.mode, "decay": self.decay,
                "consolidations": self.consolidations,
                "tasks": [{"fisher": dict(f), "anchor": dict(a)} for f, a in self.tasks]}

    def load_state_dict(self, sd: Mapping) -> None:
        """Restores lam, mode, decay and the stored (F, θ*) (tensors kept where they are)."""
        _check(sd["lam"], sd["mode"], sd["decay"])
        tasks = [(dict(t["fisher"]), dict(t["anchor"])) for t in sd["tasks"]]
        for f, a in tasks:
            if f.keys() != a.keys():
                raise ValueError("EWC.load_state_dict: a task's Fisher and anchor name different "
                                 "parameters")
        if sd["mode"] == "online" and len(tasks) > 1:
            raise ValueError(f"EWC.load_state_dict: mode 'online' keeps one task, got {len(tasks)}")
        self.lam, self.mode, self.decay = float(sd["lam"]), sd["mode"], float(sd["decay"])
        self.tasks = tasks
        self.consolidations = int(sd.get("consolidations", len(tasks)))


__all__ = ["EWC", "diagonal_fisher", "ewc_penalty"]
