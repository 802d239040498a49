"""The student's pass rate as a Beta posterior per problem, and what the frontier engine reads
from it (docs/methods.md §5). Pure functions over numpy arrays; the ledger supplies the rows.

Every ledger row is evidence about a problem's p: c successes in k trials, recorded when the
student was at optimizer step s. The student moves, so old rows count less:
    a = a0 + Σ_rows λ(age) c,   b = b0 + Σ_rows λ(age) (k − c),   age = now − s ≥ 0
with λ = RECENCY[rule](age, half_life, window):
    exponential  2^(−age / half_life)          (a discounted Beta posterior, as MoPPS / BOTS)
    window       1 if age < window, else 0     (the plain last-``window``-steps count)
    all          1                             (every row alike: today's running sums)
Closed forms under p ~ Beta(a, b), with B the Beta function:
    E[p^α (1 − p)^β]        = B(a + α, b + β) / B(a, b)       -> mean and sd of PACED's w(p)
    P(G rollouts all agree) = E[p^G] + E[(1 − p)^G]            -> a group's zero-variance risk
The last one is what a prompt-selection rule needs: the chance that a group of G rollouts
carries no gradient (all rewards equal), under what the ledger knows.

Deviations: MoPPS / BOTS discount by a factor per update; here the factor is set by a half-life
in optimizer steps (one knob with a unit). The posterior is per problem; the only sharing across
problems is ``fit_prior``, an empirical-Bayes Beta prior fitted to a pool's counts, or to each
group of it (``fit_prior_by``: per source and difficulty, say), which ``weight_estimator: shrunk``
uses (paced/weighting.py).
"""
from __future__ import annotations

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------
# Recency: the weight of a row of a given age (optimizer steps)
# ---------------------------------------------------------------------------------------------
def exponential(age, half_life: float, window: float):
    """λ = 2^(−age / half_life); half_life = inf keeps everything."""
    return np.exp2(-np.asarray(age, dtype=float) / half_life)


def window(age, half_life: float, window: float):
    """λ = 1 for age < window, else 0."""
    return (np.asarray(age, dtype=float) < window).astype(float)


def keep_all(age, half_life: float, window: float):
    """λ = 1."""
    return np.ones_like(np.asarray(age, dtype=float))


RECENCY = {"exponential": exponential, "window": window, "all": keep_all}


def effective_counts(index, successes, trials, ages, n: int, rule: str, half_life: float = float("inf"),
                     window: float = float("inf")):
    """Per-problem discounted counts (c_eff, k_eff), each (n,) float, from ledger rows.

    index (R,) int: the row's problem (0..n-1); successes, trials, ages (R,). Rows with a
    negative age (recorded after ``now``) are an error: a reader must not see the future.
    """
    index = np.asarray(index, dtype=np.int64)
    c, k, age = (np.asarray(x, dtype=float) for x in (successes, trials, ages))
    if age.size and age.min() < 0:
        raise ValueError(f"effective_counts: a row is {-age.min():g} steps in the future")
    lam = RECENCY[rule](age, half_life, window)                                # (R,)
    c_eff = np.bincount(index, weights=lam * c, minlength=n)                   # (n,)
    k_eff = np.bincount(index, weights=lam * k, minlength=n)                   # (n,)
    return c_eff, k_eff


def beta_params(c_eff, k_eff, prior_a: float = 1.0, prior_b: float = 1.0):
    """(a, b) of the posterior Beta(a0 + c_eff, b0 + k_eff − c_eff)."""
    c, k = np.asarray(c_eff, dtype=float), np.asarray(k_eff, dtype=float)
    return prior_a + c, prior_b + (k - c)


def fit_prior(c, k, steps: int = 100) -> tuple[float, float]:
    """Empirical Bayes: the Beta(a0, b0) prior over a pool of problems that maximises the
    beta-binomial marginal likelihood of its counts, Σ_i log B(a0 + c_i, b0 + k_i − c_i) −
    log B(a0, b0) (the binomial coefficients do not depend on a0, b0); c, k (n,), trials unequal
    allowed (the stopping of a sequential estimate does not enter the likelihood). L-BFGS over
    (log a0, log b0) from the uniform prior, each kept in [e^−6, e^6].
    Deviations: one Beta for the whole pool, no mass at p = 0 or 1 exactly."""
    c_t, k_t = (torch.as_tensor(np.asarray(x, dtype=float)) for x in (c, k))
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)                 # (log a0, log b0)
    opt = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

    def nll():
        opt.zero_grad()
        a, b = torch.exp(theta.clamp(-6, 6))
        lb = lambda x, y: torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)  # noqa: E731
        loss = -(lb(a + c_t, b + k_t - c_t) - lb(a, b)).sum()
        loss.backward()
        return loss
    opt.step(nll)
    a, b = np.exp(theta.detach().clamp(-6, 6).numpy())
    return float(a), float(b)


SHRINK_MIN = 8   # fit_prior_by: a group with fewer problems takes the whole pool's prior


def fit_prior_by(c, k, groups, min_size: int = SHRINK_MIN) -> tuple[np.ndarray, np.ndarray]:
    """Empirical Bayes within groups: per-problem prior (a0, b0), (n,) each, from ``fit_prior``
    on the counts of each group of ``groups`` ((n,) integer labels: problems of one source and
    difficulty, say) that holds at least ``min_size`` problems, and from ``fit_prior`` on the
    whole pool for the problems of smaller groups. Problems that the data already sorts by
    difficulty have pass rates far closer within a group than across the pool, so the prior
    pulls a few trials' p̂ towards a much better guess.
    Deviations: separate fits rather than one hierarchical model (no pooling of the groups'
    priors towards each other); the size threshold is ours."""
    c, k = np.asarray(c, dtype=float), np.asarray(k, dtype=float)
    labels = np.asarray(groups)
    a0, b0 = np.full(len(c), np.nan), np.full(len(c), np.nan)
    small = np.zeros(len(c), dtype=bool)
    for g in np.unique(labels):
        i = labels == g                                                              # (n,) bool
        if i.sum() < min_size:
            small |= i
            continue
        a0[i], b0[i] = fit_prior(c[i], k[i])
    if small.any():
        a0[small], b0[small] = fit_prior(c, k)
    return a0, b0


# ---------------------------------------------------------------------------------------------
# Closed forms under Beta(a, b)
# ---------------------------------------------------------------------------------------------
def log_beta(a, b) -> np.ndarray:
    """log B(a, b), elementwise (float64)."""
    a, b = (torch.as_tensor(np.asarray(x, dtype=float)) for x in np.broadcast_arrays(a, b))
    return (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)).numpy()


def moment(a, b, alpha: float, beta: float) -> np.ndarray:
    """E[p^α (1 − p)^β] for p ~ Beta(a, b) = B(a + α, b + β) / B(a, b)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.exp(log_beta(a + alpha, b + beta) - log_beta(a, b))


def weight_mean_sd(a, b, alpha: float = 1.0, beta: float = 1.0):
    """Posterior mean and standard deviation of PACED's w(p) = p^α (1 − p)^β."""
    m1 = moment(a, b, alpha, beta)
    m2 = moment(a, b, 2 * alpha, 2 * beta)
    return m1, np.sqrt(np.maximum(m2 - m1 * m1, 0.0))


def kernel_max(alpha: float, beta: float) -> float:
    """max_p p^α (1 − p)^β (at p = α / (α + β)): the scale weight tolerances are relative to."""
    if alpha + beta == 0:
        return 1.0
    p = alpha / (alpha + beta)
    return float(p ** alpha * (1 - p) ** beta)


def zero_variance_prob(a, b, group: int) -> np.ndarray:
    """P(a group of ``group`` rollouts all succeed or all fail) = E[p^G] + E[(1 − p)^G]."""
    return moment(a, b, group, 0.0) + moment(a, b, 0.0, group)


def thompson(a, b, rng: np.random.Generator) -> np.ndarray:
    """One draw of p per problem from its posterior (Thompson sampling)."""
    return rng.beta(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


# ---------------------------------------------------------------------------------------------
# Stopping rules for sequential estimation, and rollout budgets
# ---------------------------------------------------------------------------------------------
def settled_hard_filter(c, k, cap: int) -> np.ndarray:
    """The hard filter's decision is settled once a problem has one success and one failure
    (w = 1 whatever comes next), or once ``cap`` trials are spent (w = 0 if they all agree)."""
    c, k = np.asarray(c), np.asarray(k)
    return ((c > 0) & (c < k)) | (k >= cap)


def settled_kernel(a, b, k, alpha: float, beta: float, tol: float, cap: int) -> np.ndarray:
    """The Beta kernel's weight is settled once its posterior sd is at most ``tol`` × max w,
    or once ``cap`` trials are spent; (a, b) the posterior, k the trials spent so far."""
    _, sd = weight_mean_sd(a, b, alpha, beta)
    return (sd <= tol * kernel_max(alpha, beta)) | (np.asarray(k) >= cap)


def settled_zero(a, b, alpha: float, beta: float, zero_tol: float) -> np.ndarray:
    """The Beta kernel's weight is settled as w ≈ 0 once its posterior mean is at most
    ``zero_tol`` × max w (``zero_tol`` = 0: never). Under the uniform prior, n straight failures
    (or successes) give E[p(1 − p)] = (n + 1) / ((n + 2)(n + 3)), i.e. 0.48, 0.33, 0.20 of max w
    after n = 4, 8, 16: the rule stops a problem the student keeps failing (or solving) once
    more rollouts could only add a small weight.
    Deviations: the mean, not an upper credible bound such as mean + 2 sd: under the uniform
    prior that bound falls to 0.5 of max w only after 18 straight failures and to 0.3 after 34,
    so below a cap of 16 or 32 it would never stop anything the sd rule does not."""
    m, _ = weight_mean_sd(a, b, alpha, beta)
    return (m <= zero_tol * kernel_max(alpha, beta)) & (zero_tol > 0)


def settled_for_hard_filter(c, k, cap: int, alpha: float, beta: float, tol: float, zero_tol: float) -> np.ndarray:
    """``settled_hard_filter`` with the signature of ``SETTLED`` (α, β, tol, zero_tol unused)."""
    return settled_hard_filter(c, k, cap)


def settled_for_beta(c, k, cap: int, alpha: float, beta: float, tol: float, zero_tol: float) -> np.ndarray:
    """The Beta kernel's stopping rule on counts (c, k), each (n,): under the posterior
    Beta(1 + c, 1 + k − c), settled once the sd of w is at most ``tol`` × max w
    (``settled_kernel``), or w ≈ 0 (``settled_zero``), or ``cap`` trials are spent."""
    a, b = beta_params(c, k)
    return settled_kernel(a, b, k, alpha, beta, tol, cap) | settled_zero(a, b, alpha, beta, zero_tol)


# The sequential estimator's rule per weighting: (c, k, cap, α, β, tol, zero_tol) -> (n,) bool.
# The hard filter's weight is 0 or 1, so it has no tolerances; uniform weighting needs no p̂.
SETTLED = {"hard_filter": settled_for_hard_filter, "beta": settled_for_beta}


def group_value(a, b, sizes) -> np.ndarray:
    """The value of a group of n rollouts of a prompt: E[p (1 − p) · 1{the n rewards differ}]
    = E[p(1−p)] − E[p^(n+1) (1−p)] − E[p (1−p)^(n+1)] under Beta(a, b); 0 for n < 2. The
    expected gradient signal of a binary-reward group (p(1 − p) is the variance of a reward),
    counted only when the group varies (else its advantages are all 0). (n,) × (S,) -> (n, S)."""
    a, b = np.asarray(a, dtype=float)[:, None], np.asarray(b, dtype=float)[:, None]
    g = np.asarray(sizes, dtype=float)[None, :]
    v = moment(a, b, 1, 1) - moment(a, b, g + 1, 1) - moment(a, b, 1, g + 1)
    return np.where(g >= 2, np.maximum(v, 0.0), 0.0)


def allocate(a, b, budget: int, min_group: int, max_group: int) -> np.ndarray:
    """Rollouts per prompt (n,) int, summing to exactly ``budget``, each 0 or in
    [min_group, max_group], that maximise Σ_i group_value(a_i, b_i, n_i): a knapsack solved
    exactly by dynamic programming over prompts (O(n · budget · max_group)). Ties go to the
    allocation found first (lower indices, smaller groups). Raises if no allocation spends the
    budget exactly."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = a.size
    sizes = np.array([0, *range(min_group, max_group + 1)])                       # (S,)
    value = group_value(a, b, sizes)                                              # (n, S)
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0                                    # best[B]: the top value spending B so far
    choice = np.zeros((n, budget + 1), dtype=np.int64)
    for i in range(n):
        new, pick = np.full(budget + 1, -np.inf), np.zeros(budget + 1, dtype=np.int64)
        for j, s in enumerate(sizes):
            if s > budget:
                break
            cand = np.full(budget + 1, -np.inf)
            cand[s:] = best[:budget + 1 - s] + value[i, j]
            better = cand > new + 1e-12
            new, pick = np.where(better, cand, new), np.where(better, s, pick)
        best, choice[i] = new, pick
    if not np.isfinite(best[budget]):
        raise ValueError(f"allocate: no groups of 0 or {min_group}..{max_group} rollouts over {n} prompts "
                         f"add up to a budget of {budget}")
    out, left = np.zeros(n, dtype=np.int64), budget
    for i in range(n - 1, -1, -1):
        out[i] = choice[i, left]
        left -= out[i]
    return out


def skip_mask(p_zero_variance, threshold: float, readmit: float, rng: np.random.Generator) -> np.ndarray:
    """GRESO-style pre-rollout filter: skip a prompt whose next group would carry no gradient
    with probability ≥ ``threshold``, except that each skipped prompt is re-admitted with
    probability ``readmit`` (so a prompt the student has moved on from is seen again)."""
    p = np.asarray(p_zero_variance, dtype=float)
    return (p >= threshold) & (rng.random(p.shape) >= readmit)
