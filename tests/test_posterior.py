"""paced/posterior.py against hand computations, brute force and Monte Carlo."""
import math

import numpy as np
import pytest

from paced import posterior as P


def test_effective_counts_by_hand():
    # problem 0: rows (c, k, age) = (2, 4, 0), (4, 4, 10), (0, 4, 20); problem 1: (1, 2, 5)
    idx, c, k, age = [0, 0, 0, 1], [2, 4, 0, 1], [4, 4, 4, 2], [0, 10, 20, 5]
    ce, ke = P.effective_counts(idx, c, k, age, 3, "exponential", half_life=10)
    assert ce == pytest.approx([2 + 4 * 0.5 + 0, 1 * 2 ** -0.5, 0])
    assert ke == pytest.approx([4 + 2 + 1, 2 * 2 ** -0.5, 0])
    ce, ke = P.effective_counts(idx, c, k, age, 3, "window", window=10)
    assert ce.tolist() == [2, 1, 0] and ke.tolist() == [4, 2, 0]       # ages 10 and 20 fall out
    ce, ke = P.effective_counts(idx, c, k, age, 3, "all")
    assert ce.tolist() == [6, 1, 0] and ke.tolist() == [12, 2, 0]      # today's running sums
    with pytest.raises(ValueError, match="in the future"):
        P.effective_counts([0], [1], [1], [-1], 1, "all")


def test_moments_by_hand_and_by_monte_carlo():
    # Beta(2, 3): E[p] = 2/5, E[p^2] = 2*3/(5*6) = 1/5, so E[p(1-p)] = 1/5
    assert P.moment(2, 3, 1, 0) == pytest.approx(0.4)
    assert P.moment(2, 3, 1, 1) == pytest.approx(0.2)
    rng = np.random.default_rng(0)
    for a, b, al, be in [(1.5, 4.0, 1, 1), (3.0, 0.7, 2, 1), (9.0, 2.0, 0.5, 1.5)]:
        p = rng.beta(a, b, 400_000)
        w = p ** al * (1 - p) ** be
        m, sd = P.weight_mean_sd(a, b, al, be)
        assert m == pytest.approx(w.mean(), rel=1e-2) and sd == pytest.approx(w.std(), rel=1e-2)


def test_zero_variance_prob_is_the_beta_binomial_ends():
    for a, b, g in [(1, 1, 8), (2.5, 7.0, 4), (0.5, 0.5, 16)]:
        # beta-binomial P(X = 0) + P(X = g), summed by hand from its pmf
        pmf = [math.comb(g, x) * math.exp(math.lgamma(x + a) + math.lgamma(g - x + b) - math.lgamma(g + a + b)
                                          - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b))
               for x in range(g + 1)]
        assert sum(pmf) == pytest.approx(1.0)
        assert P.zero_variance_prob(a, b, g) == pytest.approx(pmf[0] + pmf[-1])
    assert P.zero_variance_prob(1, 1, 8) == pytest.approx(2 / 9)      # uniform: P(X = 0) = 1/(g+1)


def test_kernel_max():
    assert P.kernel_max(1, 1) == 0.25 and P.kernel_max(0, 0) == 1.0
    assert P.kernel_max(2, 1) == pytest.approx(max(p ** 2 * (1 - p) for p in np.linspace(0, 1, 10001)), rel=1e-6)


def test_stopping_rules():
    c, k = np.array([0, 1, 3, 0, 5]), np.array([3, 2, 3, 8, 8])
    assert P.settled_hard_filter(c, k, cap=8).tolist() == [False, True, False, True, True]
    # never settled before both outcomes, below the cap
    for kk in range(1, 8):
        assert not P.settled_hard_filter(np.array([0, kk]), np.array([kk, kk]), cap=8).any()
    a, b = P.beta_params(np.array([50, 1]), np.array([100, 2]))
    s = P.settled_kernel(a, b, np.array([100, 2]), 1, 1, tol=0.1, cap=64)
    assert s.tolist() == [True, False]         # 50/100: sd of w tiny; 1/2: wide
    assert P.settled_kernel(a, b, np.array([100, 64]), 1, 1, tol=0.0, cap=64).tolist() == [True, True]


def test_group_value_by_hand_and_by_monte_carlo():
    # E[p(1-p) 1{n rewards differ}] = E[p(1-p) (1 - p^n - (1-p)^n)] for a Beta posterior
    rng = np.random.default_rng(0)
    p = rng.beta(2.0, 5.0, 400_000)
    for n in (2, 4, 8):
        want = (p * (1 - p) * (1 - p ** n - (1 - p) ** n)).mean()
        assert P.group_value(np.array([2.0]), np.array([5.0]), [n])[0, 0] == pytest.approx(want, rel=1e-2)
    assert P.group_value(np.array([2.0]), np.array([5.0]), [0, 1]).tolist() == [[0.0, 0.0]]


def test_allocate_spends_exactly_the_budget_where_groups_can_vary():
    a, b = P.beta_params(np.array([0, 20, 200, 10]), np.array([200, 40, 200, 12]))
    for budget in (4, 9, 17, 30, 40):
        s = P.allocate(a, b, budget, min_group=2, max_group=10)
        assert s.sum() == budget and s.max() <= 10 and not (s == 1).any()
    s = P.allocate(a, b, 8, 2, 8)
    assert s[1] >= s[0] and s[1] >= s[2]       # p ≈ 1/2 before p ≈ 0 (0/200) or p ≈ 1 (200/200)
    assert P.allocate(a, b, 40, 2, 10).tolist() == [10, 10, 10, 10]
    with pytest.raises(ValueError, match="add up to a budget of 41"):
        P.allocate(a, b, 41, 2, 10)
    with pytest.raises(ValueError, match="add up to a budget of 3"):
        P.allocate(a, b, 3, 4, 10)


def test_allocate_is_the_brute_force_optimum():
    import itertools
    rng = np.random.default_rng(1)
    for _ in range(30):
        a, b = rng.uniform(0.5, 8, 3), rng.uniform(0.5, 8, 3)
        budget = int(rng.integers(2, 16))
        sizes = [0, *range(2, 7)]
        val = P.group_value(a, b, sizes)
        best = max((sum(val[i, sizes.index(n)] for i, n in enumerate(ns)) for ns in
                    itertools.product(sizes, repeat=3) if sum(ns) == budget), default=None)
        if best is None:
            continue
        got = P.allocate(a, b, budget, 2, 6)
        assert got.sum() == budget
        assert sum(val[i, sizes.index(n)] for i, n in enumerate(got)) == pytest.approx(best)


def test_skip_readmits_at_its_rate():
    rng = np.random.default_rng(0)
    p = np.array([0.99] * 50_000 + [0.1] * 50_000)
    m = P.skip_mask(p, threshold=0.9, readmit=0.2, rng=rng)
    assert not m[50_000:].any()                               # below the threshold: never skipped
    assert m[:50_000].mean() == pytest.approx(0.8, abs=0.01)  # above it: re-admitted 20 % of the time
