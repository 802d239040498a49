"""The frontier-engine benchmarks' pure parts (benchmarks/adaptive_passrate.py), so the scripts
cannot rot between their (minutes-long) runs: the curve crossing, the error table, the headline."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import adaptive_passrate as AP  # noqa: E402


def test_crossing_interpolates_in_log_log_and_says_how():
    assert AP.crossing([(4, 0.2), (8, 0.1)], 0.2) == (4, "<=")            # the cheapest point already meets it
    n, how = AP.crossing([(8, 0.1), (2, 0.4)], 0.2)                          # unsorted: 0.2 is halfway in log
    assert how == "=" and n == pytest.approx(4.0)
    assert AP.crossing([(2, 0.4), (8, 0.3)], 0.2) == (None, "none")


def test_errors_by_hand():
    c_ref, k_ref = np.array([0, 256, 512]), np.full(3, 512)                  # p_ref 0, 1/2, 1
    c, k = np.array([0, 1, 2]), np.array([2, 2, 2])
    e = AP.errors(c, k, c_ref, k_ref, np.zeros(3, dtype=int))
    assert e["rollouts"] == 2 and e["err_plugin"] == pytest.approx(0.0)      # plug-in exact on all three
    assert e["hard_wrong"] == 0.0
    assert e["err_unbiased"] == pytest.approx((0 + abs(0.5 - 0.25) + 0) / 3 / 0.25)   # c (k - c) / (k (k - 1))
    assert e["err_eb"] > 0 and e["err_eb_by"] == pytest.approx(e["err_eb"])  # one group: the pool's prior


def test_oracle_needs_one_rollout_where_p_is_0_or_1():
    target, n = AP.oracle_rollouts(np.array([0.0, 1.0]), n_max=8)
    assert target == 0.0 and n == 1.0


def test_summarise_reports_the_ratio_to_k8():
    row = lambda r, e: {"rollouts": r, "err_plugin": e, "err_posterior": e, "err_eb": e, "err_eb_by": e,  # noqa: E731
                        "err_unbiased": e, "hard_wrong": 0.1}
    runs = {"fixed K=4": [row(4, 0.3)], "fixed K=8": [row(8, 0.2)], "fixed K=16": [row(16, 0.1)],
            "seq hard cap=8": [row(6, 0.25)], "seq beta tol=0.2 zero=0.4": [row(2, 0.4)],
            "seq beta tol=0.1 zero=0.2": [row(8, 0.1)]}
    h = AP.summarise(runs, {"oracle": 3.0})["headline"]
    assert h["beta_k8_error"] == 0.2 and h["hard_ratio"] == 6 / 8 and h["oracle_ratio"] == 3 / 8
    assert h["meets_k8"]["sequential, plug-in"]["ratio"] == pytest.approx(0.5)   # 2 -> 8 at 0.4 -> 0.1: 4
    assert h["meets_k8"]["fixed K, EB posterior mean"]["rollouts"] == pytest.approx(8.0)
