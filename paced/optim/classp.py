"""CLASSP: continual learning through adjustment suppression and sparsity promotion
(docs/methods.md §4, arXiv 2405.09637).

An optimizer for any PyTorch model. Per element i of a parameter with gradient g:

    if g_i² > threshold:                          # sparsity promotion
        S_i <- S_i + |g_i|^p                      # accumulate only when updated (S_0 = 0)
        w_i <- w_i − lr · g_i / (ε + S_i)^(1/p)   # adjustment suppression
    else:
        nothing (w_i and S_i unchanged)

The sum includes the current gradient, and ε sits inside the root. With p = 2 and threshold 0
this is exactly ``torch.optim.Adagrad(lr=lr, initial_accumulator_value=ε, eps=0)``
(Adagrad: state_sum += g²; w -= lr·g / (√state_sum + eps), and state_sum starts at ε), up to
float rounding. The paper's experiments use p = 1: an element's step shrinks like 1 / (number
of times it was updated) for gradients of similar size.

Deviations: none relative to the paper. Relative to the author's published code: the threshold
is applied per element (the code reduces the whole tensor's test to one boolean, which makes
the threshold a no-op below 1 and freezes the tensor above it), and the accumulator adds
|g|^p (the code ignores p there). Additions not in the paper: decoupled ``weight_decay``
(w_i <- w_i·(1 − lr·weight_decay) before the step, applied only to the elements updated this
step; default 0, the paper has none) and ``maximize`` (use −g). The state is one tensor ``sum``
per parameter (no step counter), so ``memory_bytes()`` equals the parameters' bytes.
"""
from __future__ import annotations

import math

import torch


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def abs_pow(g: torch.Tensor, p: float) -> torch.Tensor:
    """|g|^p elementwise; p = 1 and p = 2 use abs / g·g so that p = 2 matches Adagrad bit for bit."""
    if p == 1:
        return g.abs()
    if p == 2:
        return g * g
    return g.abs().pow(p)


def root(x: torch.Tensor, p: float) -> torch.Tensor:
    """x^(1/p) elementwise (x >= 0); p = 1 and p = 2 use identity / sqrt."""
    if p == 1:
        return x
    if p == 2:
        return x.sqrt()
    return x.pow(1.0 / p)


def classp_mask(g: torch.Tensor, threshold: float) -> torch.Tensor:
    """The elements CLASSP updates: g_i² > threshold (bool, same shape as g).

    arXiv 2405.09637: the threshold is an absolute constant on the per-element squared
    gradient. With threshold 0, exactly the elements with a non-zero gradient.
    """
    return g * g > threshold


def classp_step(w: torch.Tensor, g: torch.Tensor, s: torch.Tensor, *, lr: float, p: float,
                threshold: float, eps: float, weight_decay: float = 0.0):
    """One CLASSP step on one tensor; returns new tensors (w', S', mask), inputs untouched.

        mask = g² > threshold
        S'   = S + |g|^p                               where mask, else S
        w'   = w(1 − lr·wd) − lr · g / (ε + S')^(1/p)  where mask, else w

    w, g, s: same shape (any). arXiv 2405.09637 (docs/methods.md §4).
    Deviations: the decoupled weight decay wd is an addition (0 = the paper).
    """
    mask = classp_mask(g, threshold)                              # (*shape) bool
    s_new = torch.where(mask, s + abs_pow(g, p), s)               # (*shape)
    # Where mask is False the denominator may be 0 (eps = 0, S = 0): that branch is discarded.
    # Where mask is True, S' >= |g|^p > 0, so the division is finite.
    step = lr * (g / root(eps + s_new, p))                        # (*shape)
    base = w * (1 - lr * weight_decay) if weight_decay else w
    w_new = torch.where(mask, base - step, w)                     # (*shape)
    return w_new, s_new, mask


def _check_hyper(lr, p, threshold, eps, weight_decay) -> None:
    if not lr >= 0:
        raise ValueError(f"CLASSP: invalid learning rate lr={lr} (need lr >= 0)")
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"CLASSP: invalid power p={p} (need a finite p > 0)")
    if not threshold >= 0:
        raise ValueError(f"CLASSP: invalid threshold={threshold} (need threshold >= 0; it "
                         "bounds the per-element squared gradient)")
    if not eps >= 0:
        raise ValueError(f"CLASSP: invalid eps={eps} (need eps >= 0)")
    if not weight_decay >= 0:
        raise ValueError(f"CLASSP: invalid weight_decay={weight_decay} (need weight_decay >= 0)")


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------
class CLASSP(torch.optim.Optimizer):
    """CLASSP optimizer (arXiv 2405.09637; formula and deviations in the module docstring).

    Args (each may be overridden per parameter group):
        lr: step size (>= 0). The author's code uses 0.2 (vision) and 0.025 (text).
        p: power of the accumulator and root (> 0); 1 in the paper's experiments, 2 = Adagrad.
        threshold: an element is updated only if its squared gradient exceeds this (>= 0).
        eps: added inside the root, (ε + S)^(1/p) (>= 0).
        weight_decay: decoupled decay of the updated elements only (>= 0; not in the paper).
        maximize: ascend instead of descend.

    State: ``state[param]["sum"]`` (same shape and dtype as the parameter), 0 at the start.
    Statistics of the last ``step()``: ``update_stats()``, ``group_update_stats()`` and
    ``last_update_fraction`` (elements updated / elements with a gradient); the counts are kept
    as tensors and synchronised only when read.
    """

    def __init__(self, params, lr: float = 1e-2, p: float = 1.0, threshold: float = 0.0,
                 eps: float = 1e-5, weight_decay: float = 0.0, maximize: bool = False):
        _check_hyper(lr, p, threshold, eps, weight_decay)
        defaults = dict(lr=lr, p=p, threshold=threshold, eps=eps, weight_decay=weight_decay,
                        maximize=maximize)
        self._last_counts: list[tuple[torch.Tensor | int, int]] = []
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """As ``torch.optim.Optimizer``'s, and validates the group's own hyper-parameters."""
        merged = {**self.defaults, **param_group}
        _check_hyper(merged["lr"], merged["p"], merged["threshold"], merged["eps"],
                     merged["weight_decay"])
        super().add_param_group(param_group)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("weight_decay", 0.0)
            group.setdefault("maximize", False)
        self.__dict__.setdefault("_last_counts", [])

    @torch.no_grad()
    def step(self, closure=None):
        """One CLASSP step on every parameter with a gradient (grad None: skipped)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        counts = []
        for group in self.param_groups:
            updated: torch.Tensor | int = 0
            total = 0
            for param in group["params"]:
                if param.grad is None:
                    continue
                g = param.grad
                if g.is_sparse:
                    raise RuntimeError("CLASSP does not support sparse gradients "
                                       "(e.g. nn.Embedding(sparse=True)); use dense gradients")
                if group["maximize"]:
                    g = -g
                state = self.state[param]
                if "sum" not in state:
                    state["sum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                w_new, s_new, mask = classp_step(
                    param, g, state["sum"], lr=group["lr"], p=group["p"],
                    threshold=group["threshold"], eps=group["eps"],
                    weight_decay=group["weight_decay"])
                param.copy_(w_new)
                state["sum"].copy_(s_new)
                updated = updated + mask.sum()                    # stays a tensor: no sync here
                total += mask.numel()
            counts.append((updated, total))
        self._last_counts = counts
        return loss

    # -- statistics -------------------------------------------------------------------------
    def group_update_stats(self) -> list[dict]:
        """Per parameter group, for the last step: {"updated", "total", "fraction"}.

        total counts the elements of parameters that had a gradient; fraction is 0.0 when
        total is 0 (also before the first step, when the list is empty).
        """
        out = []
        for updated, total in self._last_counts:
            u = int(updated)
            out.append({"updated": u, "total": total, "fraction": u / total if total else 0.0})
        return out

    def update_stats(self) -> dict:
        """Over all groups, for the last step: {"updated": int, "total": int, "fraction": float}."""
        groups = self.group_update_stats()
        u = sum(g["updated"] for g in groups)
        t = sum(g["total"] for g in groups)
        return {"updated": u, "total": t, "fraction": u / t if t else 0.0}

    @property
    def last_update_fraction(self) -> float:
        """Share of the elements (of parameters with a gradient) updated by the last step."""
        return self.update_stats()["fraction"]

    def memory_bytes(self) -> int:
        """Bytes held in the optimizer state (the ``sum`` tensors)."""
        return sum(t.numel() * t.element_size() for st in self.state.values()
                   for t in st.values() if isinstance(t, torch.Tensor))
