"""Pass-rate estimators, pass@k against brute force, and the durable ledger."""
import itertools
import math
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from paced.ledger import (Ledger, beta_mean, default_ks, falling, histogram, pass_at_k, plain,
                          unbiased_power)

ROOT = Path(__file__).resolve().parents[1]


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c correct) holding at least one correct sample."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_and_large_n():
    # 1 - C(n-c, k) / C(n, k) with exact integers, at the paper's n = 256
    for c in (0, 1, 3, 50, 255, 256):
        for k in (1, 2, 16, 128, 256):
            exact = 1 - math.comb(256 - c, k) / math.comb(256, k)
            assert pass_at_k(256, c, k) == pytest.approx(exact, abs=1e-9)
    assert pass_at_k(256, 0, 256) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_default_ks():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(10) == [1, 2, 4, 8, 10]
    assert default_ks(1) == [1]


def test_estimators():
    assert plain(3, 8) == pytest.approx(3 / 8)
    assert beta_mean(0, 8) == pytest.approx(1 / 10)
    assert beta_mean(8, 8) == pytest.approx(9 / 10)
    assert falling(5, 3) == 60 and falling(5, 0) == 1


@pytest.mark.parametrize("a,b", [(1, 1), (2, 1), (0, 2), (1, 3)])
def test_unbiased_power_is_unbiased(a, b):
    """E[estimate] over c ~ Binomial(K, p) equals p^a (1-p)^b exactly."""
    K = 8
    for p in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        c = np.arange(K + 1)
        probs = np.array([math.comb(K, int(i)) * p ** i * (1 - p) ** (K - i) for i in c])
        expected = float((probs * unbiased_power(c, K, a, b)).sum())
        assert expected == pytest.approx(p ** a * (1 - p) ** b, abs=1e-12)


def test_plug_in_bias_matches_theory():
    """E[p̂(1-p̂)] = p(1-p)(K-1)/K (docs/methods.md §1)."""
    K, p = 8, 0.3
    c = np.arange(K + 1)
    probs = np.array([math.comb(K, int(i)) * p ** i * (1 - p) ** (K - i) for i in c])
    ph = plain(c, K)
    assert float((probs * ph * (1 - ph)).sum()) == pytest.approx(p * (1 - p) * (K - 1) / K)


def test_unbiased_power_rejects_bad_args():
    with pytest.raises(ValueError):
        unbiased_power(1, 2, 2, 1)  # a + b > K
    with pytest.raises(ValueError):
        unbiased_power(1, 8, 0.5, 1)


def test_histogram_counts_ends():
    h = histogram([0, 0, 0.5, 1, 1, 1, 0.99], bins=4)
    assert h["at_zero"] == 2 and h["at_one"] == 3 and sum(h["counts"]) == 7 and h["n"] == 7


def test_ledger_record_and_aggregate(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.record({"a": (3, 8), "b": (0, 8)}, model="m1", stage="passrate")
    led.record({"a": (5, 8)}, model="m1", stage="rl", step=7)
    led.record({"a": (8, 8)}, model="m2", stage="passrate")
    assert led.counts(model="m1") == {"a": (8, 16), "b": (0, 8)}
    assert led.counts(model="m1", stage="rl") == {"a": (5, 8)}
    assert led.counts(model="m1", latest_only=True) == {"a": (5, 8), "b": (0, 8)}
    assert led.counts(problem_ids=["b"]) == {"b": (0, 8)}
    assert led.pass_rates(model="m2") == {"a": 1.0}
    # a second handle on the same file sees everything (durable, shared by commands)
    assert Ledger(tmp_path / "l.sqlite").counts(model="m2") == {"a": (8, 8)}
    stages = {(r["model"], r["stage"]) for r in led.summary()}
    assert stages == {("m1", "passrate"), ("m1", "rl"), ("m2", "passrate")}


def test_ledger_rejects_bad_counts_atomically(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(ValueError, match="problem 'y'"):
        led.record({"x": (1, 2), "y": (3, 2)}, model="m", stage="s")
    assert led.counts() == {}  # nothing of the bad batch was written


def _writer(path, ready):
    led = Ledger(path)
    ready.set()
    i = 0
    while True:  # large batches, forever, until killed
        led.record({f"p{i}-{j}": (j % 3, 4) for j in range(2000)}, model="m", stage="s", step=i)
        i += 1


def test_ledger_survives_sigkill_mid_write(tmp_path):
    path = tmp_path / "l.sqlite"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_writer, args=(path, ready))
    proc.start()
    assert ready.wait(30)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n_rows = db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    assert n_rows > 0 and n_rows % 2000 == 0  # whole batches only
    assert len(Ledger(path).counts()) == n_rows


def test_paced_ledger_shows_paced_weights_with_the_unbiased_estimator(tmp_path, capsys):
    """``paced ledger`` reports w = p^a (1-p)^b of the ledger's counts, plug-in or unbiased
    (c (K-c) / (K (K-1)) for a = b = 1), and refuses a non-integer a with 'unbiased' at load."""
    from paced import cli
    from paced.config import LedgerConfig, load_config
    from paced.passrate import inspect
    db = tmp_path / "ledger.sqlite"
    Ledger(db).record({"p0": (0, 4), "p1": (1, 4), "p2": (2, 4), "p4": (4, 4)}, model="m", stage="passrate")
    smoke = ROOT / "configs" / "smoke" / "ledger.yaml"
    cfg = load_config(LedgerConfig, smoke, ["weight_estimator=unbiased"], run_dir=tmp_path / "r")
    w = inspect(cfg, str(db))["weights"]
    assert w["by_problem"] == pytest.approx({"p0": 0, "p1": 3 / 12, "p2": 4 / 12, "p4": 0})   # c (K-c) / (K (K-1))
    assert (w["zero"], w["problems"], w["mean"]) == (2, 4, pytest.approx(7 / 48))
    w = inspect(load_config(LedgerConfig, smoke, [], run_dir=tmp_path / "r"), str(db))["weights"]
    assert w["by_problem"] == pytest.approx({"p0": 0, "p1": 3 / 16, "p2": 4 / 16, "p4": 0})   # p̂ (1 - p̂)
    base = ["ledger", "--config", smoke, "--path", db, "--run-dir", tmp_path / "r"]
    capsys.readouterr()
    assert cli.main([str(a) for a in base + ["weight_estimator=unbiased", "weight_alpha=0.5"]]) == 2
    assert capsys.readouterr().err.strip() == ("paced ledger: config error: weight_estimator: 'unbiased' "
                                               "needs integer weight_alpha and weight_beta")


def test_a_killed_estimate_resumes_to_the_uninterrupted_counts(tmp_path):
    """passrate.estimate records one transaction per sampler batch and seeds each batch by its
    position in the pool: a run killed after some batches, resumed with the recorded counts,
    samples only the missing batches, with their own seeds, and ends with the same ledger."""
    from paced.passrate import estimate
    from paced.rollout import SamplingParams
    from paced.rundir import load_model
    from paced.tasks.synthetic import generate
    model, tok, _ = load_model(None, "nano", 0, "float32", tmp_path)
    pool = generate("add", 10, 0, (1, 2))
    p = SamplingParams(temperature=1.0, max_tokens=6, seed=5)
    kw = dict(k=4, params=p, model_name="m", stage="s", batch_size=8)    # 2 problems per sampler call
    full = estimate(model, tok, pool, Ledger(tmp_path / "a.sqlite"), **kw)
    killed = Ledger(tmp_path / "b.sqlite")
    estimate(model, tok, pool[:4], killed, **kw)                          # 2 of 5 batches, then killed
    resumed = estimate(model, tok, pool, killed, **kw, recorded=killed.counts(model="m", stage="s"))
    assert resumed == full and killed.counts(model="m", stage="s") == full
    assert sum(k for _, k in killed.counts(model="m", stage="s").values()) == 10 * 4   # nothing twice
