"""PACED per-problem weights from the student's pass rate (docs/methods.md §1, arXiv 2603.11178).

A problem's distillation loss is multiplied by a detached scalar w(p̂) of its pass rate
p̂ = c / K; the batch is then normalised (÷Σw as in the authors' code, or ÷N). Weights are never
differentiated: tensors are detached, and ``problem_weights`` returns a plain numpy array.
"""
from __future__ import annotations

import numpy as np
import torch

from .ledger import plain, unbiased_power
from .posterior import fit_prior, fit_prior_by, moment


def _detach(x):
    return x.detach() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


# ---------------------------------------------------------------------------------------------
# Weightings w(p): tensor in -> tensor out, array-like in -> numpy array out
# ---------------------------------------------------------------------------------------------
def beta_kernel(p, alpha: float = 1.0, beta: float = 1.0):
    """PACED's Beta kernel w(p) = p^α (1 − p)^β, α, β ≥ 0, with 0^0 := 1.

    docs/methods.md §1 / arXiv 2603.11178: default α = β = 1 (w = p(1−p)); peak at p = α/(α+β);
    w(0) = w(1) = 0 for α, β > 0. α = β = 0 is the uniform weighting.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"beta_kernel needs alpha, beta >= 0, got alpha={alpha}, beta={beta}")
    p = _detach(p)
    if isinstance(p, torch.Tensor):
        return p.pow(alpha) * (1 - p).pow(beta)                  # torch.pow(0, 0) = 1
    return np.power(p, alpha) * np.power(1 - p, beta)            # np.power(0, 0) = 1


def hard_filter(p):
    """Hard filter w(p) = 1 if 0 < p < 1 else 0: keep only problems the student sometimes solves.

    The paper's "hard filter" baseline (docs/methods.md §1).
    """
    p = _detach(p)
    if isinstance(p, torch.Tensor):
        return ((p > 0) & (p < 1)).to(p.dtype if p.is_floating_point() else torch.float32)
    return ((p > 0) & (p < 1)).astype(float)


def uniform(p):
    """w(p) = 1: unweighted distillation, the paper's "unweighted KL" baseline (docs/methods.md §1)."""
    p = _detach(p)
    if isinstance(p, torch.Tensor):
        return torch.ones_like(p, dtype=p.dtype if p.is_floating_point() else torch.float32)
    return np.ones_like(p, dtype=float)


WEIGHTINGS = {"uniform": uniform, "hard_filter": hard_filter, "beta": beta_kernel}


def weight_of(p, weighting: str, alpha: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """w(p) under ``WEIGHTINGS[weighting]`` (α, β for the Beta kernel), a float numpy array:
    the plug-in weight of pass rates, whatever counts they came from."""
    w = beta_kernel(p, alpha, beta) if weighting == "beta" else WEIGHTINGS[weighting](p)
    return np.asarray(w, dtype=float)
WEIGHT_ESTIMATORS = ("plugin", "unbiased", "shrunk")   # w of (c, K): plug-in, unbiased, or EB posterior mean


def problem_weights(successes, trials, weighting: str, alpha: float = 1.0, beta: float = 1.0,
                    estimator: str = "plugin", groups=None) -> np.ndarray:
    """Per-problem weights from ledger counts (c successes in K trials), shape of ``successes``.

    - ``"plugin"``: w(p̂) with p̂ = c / K (``ledger.plain``) for any weighting.
    - ``"unbiased"``: Beta kernel with integer α, β only: c^(α) (K−c)^(β) / K^(α+β) (falling
      factorials, ``ledger.unbiased_power``), whose expectation over c ~ Binomial(K, p) is exactly
      p^α (1−p)^β (docs/methods.md §1); ≥ 0 for integers, so no clipping. Needs K ≥ α + β.
      For α = β = 1 it is c (K−c) / (K (K−1)), whereas the plug-in p̂(1−p̂) is biased by (K−1)/K.
    - ``"shrunk"``: Beta kernel only: the posterior mean E[p^α (1−p)^β] under Beta(a0 + c,
      b0 + K − c), where Beta(a0, b0) is the prior fitted to the whole pool's counts by
      marginal likelihood (``posterior.fit_prior``, empirical Bayes): a problem with few trials
      is pulled towards the pool. Never exactly 0, so every problem is trained on (with a
      small weight); trials may differ per problem (adaptive estimation). ``groups`` ((n,)
      integer labels, e.g. ``paced.train.passrates.group_labels``): one prior per group
      (``posterior.fit_prior_by``) instead of one for the pool.
    Deviations: the unbiased and shrunk estimators are our additions; the paper uses the
    plug-in p̂.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)}")
    if estimator not in WEIGHT_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {list(WEIGHT_ESTIMATORS)}")
    c = np.asarray(successes, dtype=float)
    k = np.asarray(trials, dtype=float)
    if np.any(k < 1) or np.any(c < 0) or np.any(c > k):
        raise ValueError("problem_weights needs 0 <= successes <= trials and trials >= 1")
    if estimator == "plugin":
        return weight_of(plain(c, k), weighting, alpha, beta)
    if estimator == "shrunk":
        if weighting != "beta":
            raise ValueError(f"estimator 'shrunk' is a posterior mean of p^alpha (1-p)^beta: weighting 'beta' "
                             f"only, not {weighting!r}")
        a0, b0 = fit_prior(c, k) if groups is None else fit_prior_by(c, k, groups)
        return np.asarray(moment(a0 + c, b0 + k - c, alpha, beta), dtype=float)
    if weighting != "beta":
        raise ValueError(f"estimator 'unbiased' exists only for weighting 'beta' (an unbiased estimate "
                         f"of p^alpha (1-p)^beta), not for {weighting!r}; use estimator 'plugin'")
    if int(alpha) != alpha or int(beta) != beta:
        raise ValueError(f"estimator 'unbiased' needs integer alpha, beta (no unbiased estimator of "
                         f"p^alpha (1-p)^beta exists otherwise), got alpha={alpha}, beta={beta}; "
                         f"use estimator 'plugin'")
    if np.any(k < alpha + beta):
        raise ValueError(f"estimator 'unbiased' needs trials K >= alpha + beta = {int(alpha + beta)}, "
                         f"got min K = {int(k.min())}")
    return np.asarray(unbiased_power(c, k, int(alpha), int(beta)), dtype=float)


# ---------------------------------------------------------------------------------------------
# Batch normalisation of the weights
# ---------------------------------------------------------------------------------------------
def normalize(weights, mode: str = "sum"):
    """Weights of one batch -> the factors multiplying the per-problem losses before summing.

    ``"sum"``: w_i / Σ_j w_j (docs/methods.md §1, the authors' code: L = Σ w_i L_i / Σ w_i);
    ``"count"``: w_i / N (the [open] alternative: a batch of low weights gives a smaller step).
    A batch whose weights sum to 0 gives all zeros (no NaN). Tensors stay tensors (detached).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; choose one of {list(NORMALIZATIONS)}")
    w = _detach(weights)
    is_tensor = isinstance(w, torch.Tensor)
    if is_tensor and not w.is_floating_point():
        w = w.float()
    n = w.numel() if is_tensor else w.size
    if n == 0:
        return w
    total = w.sum() if mode == "sum" else n
    if float(total) == 0.0:
        return torch.zeros_like(w) if is_tensor else np.zeros_like(w)
    return w / total


NORMALIZATIONS = ("sum", "count")
