"""The sequential pass-rate estimator (paced/passrate.py::estimate_sequential, passrate.adaptive):
its stopping rules against hand-written ones, the cap, the ledger's count of what was spent,
bit-exact resume (alone and inside a distill run), and the settings rejected at load."""
import json
import sqlite3
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from paced import passrate as PR
from paced import posterior as P
from paced.config import ConfigError, DemoConfig, DistillConfig, PassrateConfig, SNRConfig, load_config
from paced.ledger import Ledger
from paced.rollout import SamplingParams
from paced.tasks.base import Example

RATES = [0.0, 1.0, 0.5, 0.05, 0.95, 0.3, 0.0, 0.7, 0.1, 0.5, 0.02, 0.85]   # the fake student's p per problem
POOL = [Example(id=f"q{i}", prompt=f"problem {i}", answer="0") for i in range(len(RATES))]


class FakeSampler:
    """Stands in for ``rollout_and_verify``: each rollout of problem i succeeds with RATES[i],
    drawn from a generator seeded by the call's seed (as the real sampler is); counts calls and
    rollouts, and raises KeyboardInterrupt at call ``die_at`` (a kill mid-estimate)."""

    def __init__(self, die_at: int | None = None):
        self.calls, self.rollouts, self.die_at = 0, 0, die_at
        self.p = {e.id: r for e, r in zip(POOL, RATES)}

    def __call__(self, model, tok, batch, params, batch_size, **kw):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt("killed")
        gen = torch.Generator().manual_seed(params.seed)
        p = torch.tensor([self.p[e.id] for e in batch]).repeat_interleave(params.n)     # (B n,)
        self.rollouts += p.numel()
        return None, None, (torch.rand(p.shape, generator=gen) < p).float()


def run(tmp_path, monkeypatch, rule, round_size=2, cap=8, sampler=None, recorded=None, batch_size=8, name="l"):
    sampler = sampler or FakeSampler()
    monkeypatch.setattr(PR, "rollout_and_verify", sampler)
    ledger = Ledger(tmp_path / f"{name}.sqlite")
    out = PR.estimate_sequential(None, None, POOL, ledger, rule, round_size, cap, SamplingParams(seed=11), "m", "s",
                                 step=3, batch_size=batch_size, recorded=recorded)
    return out, ledger, sampler


def rows_in_order(ledger: Ledger) -> dict[str, list[tuple[int, int]]]:
    """Each problem's ledger rows (successes, trials) in the order they were written: its rounds."""
    with sqlite3.connect(ledger.path) as db:
        got = db.execute("SELECT problem_id, successes, trials FROM trials ORDER BY id").fetchall()
    out: dict[str, list] = {}
    for pid, c, k in got:
        out.setdefault(pid, []).append((c, k))
    return out


def hard_rule(c, k, cap):
    return P.SETTLED["hard_filter"](c, k, cap, 1.0, 1.0, 0.0, 0.0)


def test_hard_filter_stops_exactly_when_both_outcomes_are_seen_or_at_the_cap(tmp_path, monkeypatch):
    cap = 8
    out, ledger, sampler = run(tmp_path, monkeypatch, partial(hard_rule, cap=cap), cap=cap)
    assert out == ledger.counts(model="m", stage="s", step=3)          # what it returns is what it recorded
    assert sum(k for _, k in out.values()) == sampler.rollouts          # every rollout drawn is counted once
    for rows in rows_in_order(ledger).values():
        assert all(k == 2 for _, k in rows)
        seen = np.cumsum([c for c, _ in rows]), 2 * np.arange(1, len(rows) + 1)   # (successes, trials) per round
        both = [0 < c < k for c, k in zip(*seen)]
        assert not any(both[:-1])                    # never stopped after a round with both outcomes ...
        assert both[-1] or seen[1][-1] == cap        # ... nor before one (or the cap)
    assert out["q0"] == (0, 8) and out["q1"] == (8, 8)                  # p = 0, 1: to the cap
    assert max(k for _, k in out.values()) <= cap
    assert sampler.rollouts < cap * len(POOL)                            # some problems stopped early


def test_beta_rule_by_hand(tmp_path, monkeypatch):
    # n straight failures: E[p(1 - p)] under Beta(1, 1 + n) = (n + 1) / ((n + 2)(n + 3)), by hand
    for n in range(20):
        a, b = P.beta_params(0, n)
        mean = (n + 1) / ((n + 2) * (n + 3))
        for zero_tol in (0.3, 0.5):
            assert P.settled_zero(a, b, 1, 1, zero_tol) == (mean <= zero_tol * 0.25)
        assert not P.settled_zero(a, b, 1, 1, 0.0)                      # 0 = off
    c, k = np.array([0, 0, 5, 1, 3]), np.array([4, 3, 10, 2, 32])
    # (0, 4): mean 5/42 = 0.476 of max w <= 0.48 (w ~ 0); (0, 3): 4/30 = 0.533 > 0.48; (5, 10): Beta(6, 6),
    # sd of w 0.097 of max w <= 0.15; (1, 2): Beta(2, 2), sd 0.214 > 0.15, mean 0.8 > 0.48; (3, 32): the cap
    assert P.SETTLED["beta"](c, k, 32, 1.0, 1.0, 0.15, 0.48).tolist() == [True, False, True, False, True]
    rule = partial(P.SETTLED["beta"], cap=16, alpha=1.0, beta=1.0, tol=0.15, zero_tol=0.4)
    _, ledger, _ = run(tmp_path, monkeypatch, rule, cap=16)
    for rows in rows_in_order(ledger).values():             # the rule was open before every round but the first
        c = np.cumsum([0] + [c for c, _ in rows])
        k = 2 * np.arange(len(rows) + 1)
        assert not rule(c[1:-1], k[1:-1]).any() and (rule(c[-1:], k[-1:]).all() or k[-1] == 16)


@pytest.mark.parametrize("die_at", [2, 5, 9])
def test_resume_is_bit_exact(tmp_path, monkeypatch, die_at):
    rule = partial(hard_rule, cap=12)
    full, _, s_full = run(tmp_path, monkeypatch, rule, cap=12, name="full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, monkeypatch, rule, cap=12, sampler=FakeSampler(die_at), name="crash")
    led = Ledger(tmp_path / "crash.sqlite")
    recorded = led.counts(model="m", stage="s", step=3)
    assert recorded and recorded != full                        # a kill left part of the estimate
    again, led, s_again = run(tmp_path, monkeypatch, rule, cap=12, recorded=recorded, name="crash")
    assert again == full and led.counts(model="m", stage="s", step=3) == full
    assert s_again.calls == s_full.calls - (die_at - 1)           # only the calls the kill lost are drawn again
    done, _, s_done = run(tmp_path, monkeypatch, rule, cap=12, recorded=full, name="done")
    assert done == full and s_done.calls == 0                     # a finished estimate samples nothing


def test_counts_that_do_not_fit_the_rounds_are_an_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="do not fit round 0"):
        run(tmp_path, monkeypatch, partial(hard_rule, cap=8), recorded={"q0": (0, 3)})
    with pytest.raises(ValueError, match="not a multiple of round_size 4"):
        run(tmp_path, monkeypatch, partial(hard_rule, cap=10), round_size=4, cap=10)


@pytest.mark.parametrize("root, overrides, message", [
    (PassrateConfig, ["passrate.round_size=3", "passrate.max_generations=16"],
     "passrate.max_generations: 16 is not a multiple of passrate.round_size=3 (the cap ends a round)"),
    (PassrateConfig, ["passrate.round_size=0"], "passrate.round_size: 0 is below the minimum 1"),
    (PassrateConfig, ["passrate.weight_tol=1.5"], "passrate.weight_tol: 1.5 is above the maximum 1.0"),
    (PassrateConfig, ["passrate.zero_tol=-0.1"], "passrate.zero_tol: -0.1 is below the minimum 0.0"),
    (PassrateConfig, ["passrate.max_generations=5000"], "passrate.max_generations: 5000 is above the maximum 4096"),
    (DistillConfig, ["teacher.path=self", "passrate.adaptive=true",
                     "distill.stages=[{name: a, weighting: hard_filter}, {name: b, weight_estimator: unbiased}]"],
     "distill.stages[1].weight_estimator: 'unbiased' is unbiased for a fixed K only; with passrate.adaptive the "
     "trials depend on the outcomes, use 'plugin'"),
    (DemoConfig, ["passrate.adaptive=true", "distill.stages=[{weight_estimator: unbiased}]"],
     "distill.stages[0].weight_estimator: 'unbiased' is unbiased for a fixed K only; with passrate.adaptive the "
     "trials depend on the outcomes, use 'plugin'"),
    (SNRConfig, ["teacher.path=self", "passrate.adaptive=true"],
     "passrate.adaptive: paced snr bins problems by p-hat from K = passrate.num_generations rollouts each; set "
     "passrate.adaptive=false"),
])
def test_bad_settings_are_rejected_at_load(root, overrides, message):
    who = {PassrateConfig: ["model.preset=nano"], DemoConfig: []}.get(root, ["student.preset=nano"])
    with pytest.raises(ConfigError) as e:
        load_config(root, None, [*who, *overrides])
    assert str(e.value) == message


def test_defaults_keep_the_fixed_k_estimate():
    cfg = load_config(DistillConfig, None, ["student.preset=nano", "teacher.path=self",
                                            "distill.stages=[{weight_estimator: unbiased}]"])
    assert cfg.passrate.adaptive is False and cfg.passrate.num_generations == 8      # unbiased fine without it


def distill_cfg(run_dir, student, *overrides):
    """tests/test_distill.py's smoke distillation of the half-learned student on 24 additions."""
    from pathlib import Path
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke" / "distill.yaml"
    return load_config(DistillConfig, smoke, [
        f"student.path={student}", "student.preset=null", "teacher.privileged=true",
        "data.train=[{source: add, n: 24, difficulty: 1}]", "run.progress=false", *overrides], run_dir=run_dir)


@pytest.mark.parametrize("estimator", ["plugin", "shrunk"])
def test_distill_with_adaptive_passrate_resumes_bit_exact(tmp_path, half_learned_add, monkeypatch, estimator):
    """A run killed in the middle of its second sequential estimate (step 3) resumes from the
    step-3 checkpoint to the same weights and the same ledger as an uninterrupted run (with the
    plug-in weights, and with shrunk ones under one prior per difficulty)."""
    from paced.train import distill as D
    shrunk = ", weight_estimator: shrunk, shrink_by: source_difficulty" if estimator == "shrunk" else ""
    common = ["data.eval=[]", "data.forgetting=[]", "passrate.adaptive=true", "passrate.max_generations=8",
              "distill.stages=[{name: s, loss_type: forward_kl, max_steps: 6, weighting: beta, reestimate_every: 3"
              f"{shrunk}}}]", "distill.per_device_train_batch_size=8", "run.save_steps=3", "run.save_total_limit=0",
              *(["data.train=[{source: add, n: 16, difficulty: 1}, {source: add, n: 16, difficulty: 2, seed: 1}]"]
                if shrunk else [])]
    real = PR.rollout_and_verify
    calls = {"n": 0, "die_at": None}

    def counted(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(PR, "rollout_and_verify", counted)
    D.train(distill_cfg(tmp_path / "full", half_learned_add, *common))
    full = Ledger(tmp_path / "full" / "ledger.sqlite")
    first = full.counts(stage="0:s", step=0)
    assert len({k for _, k in first.values()}) > 1                     # unequal trials: it did adapt
    rounds0 = max(k for _, k in first.values()) // 2                    # sampler calls of the step-0 estimate
    calls.update(n=0, die_at=rounds0 + 2)                               # dies in round 1 at step 3
    crashed = distill_cfg(tmp_path / "crash", half_learned_add, *common)
    with pytest.raises(KeyboardInterrupt):
        D.train(crashed)
    assert (tmp_path / "crash" / "checkpoints" / "step-3").exists()
    part = Ledger(tmp_path / "crash" / "ledger.sqlite").counts(stage="0:s", step=3)
    assert part and part != full.counts(stage="0:s", step=3)
    calls.update(die_at=None)
    D.train(crashed, resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for step in (0, 3):
        assert Ledger(tmp_path / "crash" / "ledger.sqlite").counts(stage="0:s", step=step) == \
            full.counts(stage="0:s", step=step)
    steps = [json.loads(x)["step"] for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_paced_passrate_adaptive_records_what_it_reports(tmp_path):
    """``paced passrate`` with passrate.adaptive: the Beta rule at α = β = 1; the summary's
    rollouts are the ledger's trials, and an untrained model's straight failures stop at the
    w ≈ 0 rule (6 failures: mean 7/72 = 0.39 of max w <= zero_tol 0.4), not at the cap."""
    cfg = load_config(PassrateConfig, None, [
        "model.preset=nano", "data.train=[{source: add, n: 6, difficulty: 1}]", "passrate.adaptive=true",
        "passrate.max_generations=16", "sampling.max_completion_length=4", "run.progress=false"],
        run_dir=tmp_path)
    summary = PR.run(cfg)
    counts = Ledger(tmp_path / "ledger.sqlite").counts()
    assert summary["adaptive"] and summary["rollouts"] == sum(k for _, k in counts.values())
    assert {k for c, k in counts.values() if c == 0} == {6}


def test_fit_prior_recovers_the_pool_by_monte_carlo():
    """Problems with p ~ Beta(0.8, 2.5), 8 or 16 trials each: the marginal-likelihood fit comes
    back near (0.8, 2.5); all-failure pools push a0 to its floor."""
    rng = np.random.default_rng(0)
    p = rng.beta(0.8, 2.5, 4000)
    k = np.where(rng.random(4000) < 0.5, 8, 16)
    a, b = P.fit_prior(rng.binomial(k, p), k)
    assert a == pytest.approx(0.8, rel=0.1) and b == pytest.approx(2.5, rel=0.1)
    a, b = P.fit_prior(np.zeros(50), np.full(50, 8))
    assert a < 0.01 and a / (a + b) < 1e-3
