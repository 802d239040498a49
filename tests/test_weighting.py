"""PACED weights: Beta-kernel identities (docs/methods.md §1), estimators, batch normalisation."""
from math import comb

import numpy as np
import pytest
import torch

from paced.weighting import (NORMALIZATIONS, WEIGHTINGS, beta_kernel, hard_filter,
                             normalize, problem_weights, uniform)

GRID = np.linspace(0.0, 1.0, 100_001)


@pytest.mark.parametrize("alpha,beta", [(1, 1), (2, 1), (1, 3), (0.5, 0.5), (2.5, 4.0), (5, 2)])
def test_beta_kernel_argmax_is_alpha_over_alpha_plus_beta(alpha, beta):
    w = beta_kernel(GRID, alpha, beta)
    assert GRID[np.argmax(w)] == pytest.approx(alpha / (alpha + beta), abs=1e-4)


@pytest.mark.parametrize("alpha,beta", [(1, 1), (0.5, 2), (3, 0.1)])
def test_beta_kernel_zero_at_ends(alpha, beta):
    w = beta_kernel(np.array([0.0, 1.0]), alpha, beta)
    assert w.tolist() == [0.0, 0.0]
    assert (beta_kernel(GRID[1:-1], alpha, beta) > 0).all()


def test_beta_kernel_integral_and_zero_power():
    w = beta_kernel(GRID, 1, 1)
    assert np.trapezoid(w, GRID) == pytest.approx(1 / 6, abs=1e-9)
    # 0^0 := 1: alpha = 0 puts the peak at p = 0 with w(0) = 1; alpha = beta = 0 is uniform
    assert beta_kernel(np.array([0.0]), 0, 2).item() == 1.0
    assert beta_kernel(np.array([1.0]), 3, 0).item() == 1.0
    np.testing.assert_array_equal(beta_kernel(GRID, 0, 0), np.ones_like(GRID))
    with pytest.raises(ValueError):
        beta_kernel(GRID, -1, 1)


def test_beta_kernel_tensor_is_detached():
    p = torch.tensor([0.0, 0.25, 0.5, 1.0], requires_grad=True)
    w = beta_kernel(p, 1, 1)
    assert isinstance(w, torch.Tensor) and not w.requires_grad
    torch.testing.assert_close(w, torch.tensor([0.0, 0.1875, 0.25, 0.0]))
    torch.testing.assert_close(beta_kernel(torch.tensor([0.0]), 0.0, 1.0), torch.tensor([1.0]))


def test_hard_filter_and_uniform():
    p = np.array([0.0, 0.125, 0.5, 0.875, 1.0])
    np.testing.assert_array_equal(hard_filter(p), [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(uniform(p), np.ones(5))
    pt = torch.tensor(p)
    torch.testing.assert_close(hard_filter(pt), torch.tensor([0.0, 1, 1, 1, 0], dtype=torch.float64))
    torch.testing.assert_close(uniform(pt), torch.ones(5, dtype=torch.float64))
    assert set(WEIGHTINGS) == {"uniform", "hard_filter", "beta"}


def test_problem_weights_plugin():
    c, k = np.array([0, 1, 4, 7, 8]), np.full(5, 8)
    p = c / k
    np.testing.assert_allclose(problem_weights(c, k, "beta"), p * (1 - p))
    np.testing.assert_allclose(problem_weights(c, k, "beta", alpha=2, beta=0.5), p ** 2 * (1 - p) ** 0.5)
    np.testing.assert_array_equal(problem_weights(c, k, "hard_filter"), [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(problem_weights(c, k, "uniform"), np.ones(5))
    assert isinstance(problem_weights(c, k, "beta"), np.ndarray)


def test_problem_weights_unbiased():
    K = 8
    c = np.arange(K + 1)
    got = problem_weights(c, np.full(K + 1, K), "beta", estimator="unbiased")
    np.testing.assert_allclose(got, c * (K - c) / (K * (K - 1)))
    plug = problem_weights(c, np.full(K + 1, K), "beta")
    np.testing.assert_allclose(plug, got * (K - 1) / K)         # plug-in = unbiased x (K-1)/K


def test_problem_weights_unbiased_expectation_is_exact():
    # E_{c ~ Binomial(K, p)}[w(c)] = p^alpha (1-p)^beta exactly; the plug-in is biased by (K-1)/K
    K = 6
    c = np.arange(K + 1)
    for alpha, beta in [(1, 1), (2, 1), (1, 2), (2, 3)]:
        w = problem_weights(c, np.full(K + 1, K), "beta", alpha, beta, estimator="unbiased")
        assert (w >= 0).all()
        for p in (0.1, 0.5, 0.8):
            pmf = np.array([comb(K, i) * p ** i * (1 - p) ** (K - i) for i in c])
            assert pmf @ w == pytest.approx(p ** alpha * (1 - p) ** beta, abs=1e-12)
    plug = problem_weights(c, np.full(K + 1, K), "beta")
    pmf = np.array([comb(K, i) * 0.5 ** K for i in c])
    assert pmf @ plug == pytest.approx(0.25 * (K - 1) / K)


def test_problem_weights_errors():
    c, k = np.array([1, 2]), np.array([4, 4])
    with pytest.raises(ValueError, match="integer"):
        problem_weights(c, k, "beta", alpha=1.5, estimator="unbiased")
    with pytest.raises(ValueError, match="only for weighting 'beta'"):
        problem_weights(c, k, "hard_filter", estimator="unbiased")
    with pytest.raises(ValueError, match="K >= alpha"):
        problem_weights(c, k, "beta", alpha=3, beta=2, estimator="unbiased")
    with pytest.raises(ValueError, match="unknown weighting"):
        problem_weights(c, k, "gauss")
    with pytest.raises(ValueError, match="unknown estimator"):
        problem_weights(c, k, "beta", estimator="mle")
    with pytest.raises(ValueError):
        problem_weights(np.array([5]), np.array([4]), "beta")


def test_normalize():
    w = np.array([0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(normalize(w, "sum"), w / 2.0)
    np.testing.assert_allclose(normalize(w, "count"), w / 4.0)
    assert normalize(w, "sum").sum() == pytest.approx(1.0)
    for mode in NORMALIZATIONS:
        z = normalize(np.zeros(3), mode)
        np.testing.assert_array_equal(z, np.zeros(3))
        zt = normalize(torch.zeros(3), mode)
        assert isinstance(zt, torch.Tensor) and (zt == 0).all() and not torch.isnan(zt).any()
    wt = torch.tensor([1.0, 3.0], requires_grad=True)
    out = normalize(wt)
    assert not out.requires_grad
    torch.testing.assert_close(out, torch.tensor([0.25, 0.75]))
    with pytest.raises(ValueError):
        normalize(w, "max")


def test_problem_weights_shrunk_is_the_posterior_mean_under_the_fitted_prior():
    from paced.posterior import fit_prior, moment
    rng = np.random.default_rng(0)
    c, k = rng.binomial(6, rng.beta(0.5, 3, 300)), np.full(300, 6)
    a0, b0 = fit_prior(c, k)
    got = problem_weights(c, k, "beta", 1, 2, estimator="shrunk")
    np.testing.assert_allclose(got, moment(a0 + c, b0 + k - c, 1, 2))
    assert (got > 0).all()                                   # never exactly 0: every problem trains
    with pytest.raises(ValueError, match="estimator 'shrunk' is a posterior mean"):
        problem_weights(c, k, "hard_filter", estimator="shrunk")


@pytest.mark.parametrize("K", [4, 8])
def test_shrunk_weights_are_closer_to_the_truth_than_the_plug_in(K):
    """On a pool whose p follows a Beta (the estimator's own assumption), over 3 seeds."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        p = rng.beta(0.5, 3.0, 4000)
        c, k = rng.binomial(K, p), np.full(4000, K)
        err = {e: np.abs(problem_weights(c, k, "beta", estimator=e) - p * (1 - p)).mean() for e in ("plugin", "shrunk")}
        assert err["shrunk"] < err["plugin"], err


def test_shrunk_by_group_fits_one_prior_per_group_and_the_pools_for_small_ones():
    from paced.posterior import SHRINK_MIN, fit_prior, moment
    rng = np.random.default_rng(1)
    sizes, means = (60, 40, SHRINK_MIN - 1), (0.1, 0.7, 0.4)
    groups = np.repeat(np.arange(3), sizes)                                     # (n,)
    p = np.concatenate([rng.beta(20 * m, 20 * (1 - m), s) for m, s in zip(means, sizes)])
    k = rng.integers(2, 9, len(p))                                              # unequal trials
    c = rng.binomial(k, p)
    got = problem_weights(c, k, "beta", 1, 1, estimator="shrunk", groups=groups)
    want = np.empty(len(p))
    for g in (0, 1):
        i = groups == g
        a0, b0 = fit_prior(c[i], k[i])
        want[i] = moment(a0 + c[i], b0 + k[i] - c[i], 1, 1)
    a0, b0 = fit_prior(c, k)                                                    # the small group: the pool's
    i = groups == 2
    want[i] = moment(a0 + c[i], b0 + k[i] - c[i], 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    one = problem_weights(c, k, "beta", 1, 1, estimator="shrunk", groups=np.zeros(len(p), dtype=int))
    np.testing.assert_allclose(one, problem_weights(c, k, "beta", 1, 1, estimator="shrunk"))


def test_shrunk_by_group_is_closer_to_the_truth_where_groups_sort_the_pass_rates():
    """Pass rates that depend on a known difficulty (as the synthetic families' and MATH's
    levels do): one prior per difficulty beats the pool's prior, which beats the plug-in, at K = 4."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        d = rng.integers(0, 6, 3000)                                             # (n,) difficulty
        p = rng.beta(8 * (1 - d / 6) + 0.2, 8 * d / 6 + 0.2)
        c, k = rng.binomial(4, p), np.full(3000, 4)
        err = lambda w: np.abs(w - p * (1 - p)).mean()  # noqa: E731
        by = err(problem_weights(c, k, "beta", estimator="shrunk", groups=d))
        pool = err(problem_weights(c, k, "beta", estimator="shrunk"))
        plug = err(problem_weights(c, k, "beta"))
        assert by < pool < plug, (seed, by, pool, plug)
