"""One ledger across stages: lineage, discounted counts by hand, and a distillation run that
reads the p̂ an RL run left behind (and the reverse) without fresh rollouts."""
from pathlib import Path

import numpy as np
import pytest

from paced.config import ConfigError, DistillConfig, RLConfig, load_config
from paced.ledger import Ledger
from paced.runlog import read_jsonl
from paced.train import distill as D
from paced.train import rl as RL
from paced.train.lineage import ledger_parents, link_parent

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"
POOL = "data.train=[{source: add, n: 32, difficulty: 1}]"


def test_discounted_counts_by_hand(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.record({"a": (4, 4), "b": (0, 4)}, "gp", "passrate", step=0)       # grandparent, step 0
    led.record({"a": (2, 4)}, "parent", "rl", step=10)                    # parent at step 10 of 10
    led.record({"a": (3, 8)}, "parent", "rl:hinted", step=10)              # Guide's: never p̂
    led.record({"a": (1, 2), "b": (2, 2)}, "child", "0:s", step=3)
    led.record({"b": (1, 1)}, "child", "0:s", step=7)                      # the child's future at now = 5
    led.set_parent("parent", "gp", 0)
    led.set_parent("child", "parent", 10)
    assert led.lineage("child") == [("child", 0, 0), ("parent", 10, 1), ("gp", 10, 2)]
    # ages at now = 5: child rows 5 - 3 = 2; parent 5 + 10 - 10 = 5; grandparent 5 + 10 - 0 = 15
    c, k = led.discounted_counts("child", ["a", "b", "z"], 5, "exponential", half_life=5)
    lam = {2: 2 ** -0.4, 5: 0.5, 15: 2 ** -3}
    assert c == pytest.approx([1 * lam[2] + 2 * lam[5] + 4 * lam[15], 2 * lam[2] + 0, 0])
    assert k == pytest.approx([2 * lam[2] + 4 * lam[5] + 4 * lam[15], 2 * lam[2] + 4 * lam[15], 0])
    c, k = led.discounted_counts("child", ["a", "b"], 5, "window", window=2, forget_by="version")
    assert c.tolist() == [3, 2] and k.tolist() == [6, 2]                 # versions 0 and 1 only
    c, k = led.discounted_counts("child", ["a", "b"], 5, "all", exclude=("0:s", 3))
    assert c.tolist() == [6, 0] and k.tolist() == [8, 4]                 # the child's step-3 rows left out
    with pytest.raises(ValueError, match="own parent"):
        led.set_parent("x", "x", 0)


def test_named_parent_must_exist(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(ValueError, match=r"ledger.parent: 'runs/nope:policy' has no rows in .*l.sqlite"):
        link_parent(led, "me", "runs/nope:policy", None)
    assert link_parent(led, "me", None, None) == []


def rl_cfg(run_dir, policy, *overrides):
    return load_config(RLConfig, SMOKE / "rl.yaml", [
        f"policy.path={policy}", "policy.preset=null", POOL, "data.eval=[]", "run.progress=false",
        *overrides], run_dir=run_dir)


def distill_cfg(run_dir, student, *overrides):
    return load_config(DistillConfig, SMOKE / "distill.yaml", [
        f"student.path={student}", "student.preset=null", "teacher.privileged=true", POOL, "data.eval=[]",
        "data.forgetting=[]", "passrate.num_generations=8", "run.progress=false", *overrides], run_dir=run_dir)


def test_distill_reads_the_pass_rates_an_rl_run_left(tmp_path, half_learned_add):
    RL.train(rl_cfg(tmp_path / "rl", half_learned_add, "rl.max_steps=4"))   # 4 x 4 prompts x 8: every prompt seen
    led = Ledger(tmp_path / "rl" / "ledger.sqlite")
    rl_tag = f"{(tmp_path / 'rl').resolve()}:policy"
    assert ledger_parents(led, str(tmp_path / "rl" / "model")) == [(rl_tag, 4)]
    before = led.summary()
    stage = "[{name: s, loss_type: forward_kl, max_steps: 2, weighting: hard_filter, passrate_source: ledger}]"
    D.train(distill_cfg(tmp_path / "d", tmp_path / "rl" / "model", f"ledger.path={led.path}",
                        "ledger.parent=auto", f"distill.stages={stage}"))
    d_tag = f"{(tmp_path / 'd').resolve()}:student"
    assert led.lineage(d_tag)[1] == (rl_tag, 4, 1)
    rl_counts = led.counts(model=rl_tag, stage="rl")
    fresh = led.counts(model=d_tag)
    # only problems the rl run never drew were sampled afresh; the rest came from the rl rows
    assert set(fresh).isdisjoint(rl_counts) and len(rl_counts) + len(fresh) == 32
    assert len(led.summary()) == len(before) + (1 if fresh else 0)
    rows = read_jsonl(tmp_path / "d" / "metrics.jsonl")
    ids = sorted({*rl_counts, *fresh})
    ck = {**rl_counts, **fresh}
    zero = np.mean([ck[i][0] in (0, ck[i][1]) for i in ids])
    assert rows[0]["zero_weight_share"] == pytest.approx(zero)           # w from those counts
    # paced ledger shows the lineage and p̂ as the trainer reads it across it
    from paced.config import LedgerConfig
    from paced.passrate import inspect
    got = inspect(load_config(LedgerConfig, None, [f"ledger.model={d_tag}"]), str(led.path))
    assert [t for t, _, _ in got["lineage"]] == [d_tag, rl_tag]
    assert got["recency"]["problems"] == 32 and got["recency"]["histogram"]["n"] == 32


def test_rl_reads_the_pass_rates_a_passrate_run_left(tmp_path, half_learned_add):
    from paced.config import PassrateConfig
    from paced.passrate import run as passrate
    passrate(load_config(PassrateConfig, None, [f"model.path={half_learned_add}", POOL, "run.progress=false",
                                                  f"ledger.path={tmp_path / 'l.sqlite'}"], run_dir=tmp_path / "p"))
    common = ("rl.prompt_weighting=hard_filter", "rl.max_steps=1", f"ledger.path={tmp_path / 'l.sqlite'}")
    RL.train(rl_cfg(tmp_path / "alone", half_learned_add, *common))
    RL.train(rl_cfg(tmp_path / "child", half_learned_add, *common, "ledger.parent=auto"))
    alone, child = read_jsonl(tmp_path / "alone" / "metrics.jsonl"), read_jsonl(tmp_path / "child" / "metrics.jsonl")
    assert alone[0]["mean_prompt_weight"] == 1.0       # nothing on record: p̂ = 1/2 everywhere
    assert child[0]["mean_prompt_weight"] < 1.0        # the passrate run's p̂ = 0 / 1 prompts lost their weight


def test_rl_reads_the_pass_rates_a_distill_run_left(tmp_path, half_learned_add):
    stage = "[{name: r, loss_type: reverse_kl, max_steps: 2, weighting: hard_filter}]"
    D.train(distill_cfg(tmp_path / "d", half_learned_add, f"distill.stages={stage}"))
    led = Ledger(tmp_path / "d" / "ledger.sqlite")
    d_tag = f"{(tmp_path / 'd').resolve()}:student"
    assert {r["stage"] for r in led.summary()} == {"0:r", "0:r:online"}   # the estimate and the responses
    RL.train(rl_cfg(tmp_path / "rl", tmp_path / "d" / "model", "rl.prompt_weighting=hard_filter", "rl.max_steps=1",
                    f"ledger.path={led.path}", "ledger.parent=auto"))
    # by hand: every row of the distill run, summed per problem (recency all), hard filter 0 < c < K
    ids = [f"add/d1/s0/{i}" for i in range(32)]
    ck = led.counts(model=d_tag)
    w = [1.0 if i not in ck else float(0 < ck[i][0] < ck[i][1]) for i in ids]
    row = read_jsonl(tmp_path / "rl" / "metrics.jsonl")[0]
    assert set(ck) <= set(ids) and row["mean_prompt_weight"] == pytest.approx(np.mean(w))


def test_bad_lineage_settings_are_config_errors(tmp_path, half_learned_add):
    bad = "[{name: s, passrate_source: ledger, weighting: beta, weight_estimator: unbiased}]"
    with pytest.raises(ConfigError, match=r"distill.stages\[0\].passrate_source: 'ledger' gives discounted"):
        distill_cfg(tmp_path, half_learned_add, f"distill.stages={bad}")
    with pytest.raises(ConfigError, match="ledger.recency"):
        rl_cfg(tmp_path, half_learned_add, "ledger.recency=sometimes")


def _same_weights(a_dir, b_dir):
    from safetensors.torch import load_file
    a, b = load_file(a_dir / "model" / "model.safetensors"), load_file(b_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_is_exact_reading_a_parent_with_forgetting(tmp_path, half_learned_add, killed_at_update):
    RL.train(rl_cfg(tmp_path / "rl", half_learned_add, "rl.max_steps=2"))
    led = f"ledger.path={tmp_path / 'rl' / 'ledger.sqlite'}"
    read = (led, "ledger.parent=auto", "ledger.recency=exponential", "ledger.half_life=3")
    stage = ("distill.stages=[{name: r, loss_type: reverse_kl, max_steps: 6, weighting: beta, "
             "passrate_source: ledger, reestimate_every: 2}]")
    D.train(distill_cfg(tmp_path / "full", tmp_path / "rl" / "model", *read, stage))
    crashed = distill_cfg(tmp_path / "crash", tmp_path / "rl" / "model", *read, stage)
    killed_at_update(lambda: D.train(crashed), 5)
    D.train(crashed, resume=True)
    _same_weights(tmp_path / "full", tmp_path / "crash")
    full, crash = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("full", "crash"))
    assert [r["mean_weight"] for r in full] == [r["mean_weight"] for r in crash]
    # and rl reading the distill runs' rows (its parent), with a window, resumes exactly too
    common = ("rl.max_steps=4", "run.save_steps=2", "rl.prompt_weighting=beta", led, "ledger.parent=auto",
              "ledger.recency=window", "ledger.window=3")
    RL.train(rl_cfg(tmp_path / "rl_full", tmp_path / "full" / "model", *common))
    crashed = rl_cfg(tmp_path / "rl_crash", tmp_path / "full" / "model", *common)
    killed_at_update(lambda: RL.train(crashed), 3)
    RL.train(crashed, resume=True)
    _same_weights(tmp_path / "rl_full", tmp_path / "rl_crash")
    full, crash = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("rl_full", "rl_crash"))
    assert [r["mean_prompt_weight"] for r in full] == [r["mean_prompt_weight"] for r in crash]


def test_a_kill_inside_a_ledger_stage_estimate_resumes_exactly(tmp_path, half_learned_add, monkeypatch):
    """Killed between two sampler batches of the stage-start estimate (8 of 32 problems known
    from the parent, 24 sampled in 3 batches): the resumed run samples the same batches again."""
    import paced.passrate as PR
    RL.train(rl_cfg(tmp_path / "rl", half_learned_add, "rl.max_steps=2"))
    common = (f"ledger.path={tmp_path / 'rl' / 'ledger.sqlite'}", "ledger.parent=auto", "sampling.batch_size=64",
              "distill.stages=[{name: r, loss_type: reverse_kl, max_steps: 2, weighting: beta, "
              "passrate_source: ledger}]")
    D.train(distill_cfg(tmp_path / "full", tmp_path / "rl" / "model", *common))
    real, calls = PR.rollout_and_verify, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    crashed = distill_cfg(tmp_path / "crash", tmp_path / "rl" / "model", *common)
    monkeypatch.setattr(PR, "rollout_and_verify", dying)
    with pytest.raises(KeyboardInterrupt):
        D.train(crashed)
    monkeypatch.setattr(PR, "rollout_and_verify", real)
    tag = f"{(tmp_path / 'crash').resolve()}:student"
    assert len(Ledger(tmp_path / "rl" / "ledger.sqlite").counts(model=tag)) == 8   # one batch made it
    D.train(crashed, resume=True)
    _same_weights(tmp_path / "full", tmp_path / "crash")
    full_tag = f"{(tmp_path / 'full').resolve()}:student"
    led = Ledger(tmp_path / "rl" / "ledger.sqlite")
    assert led.counts(model=full_tag, stage="0:r") == led.counts(model=tag, stage="0:r")


def test_a_ledger_stage_samples_the_unknown_problems_adaptively(tmp_path, half_learned_add):
    """passrate.adaptive with passrate_source ledger: the 24 problems the parent's run never
    sampled get the sequential estimate (unequal trials, a multiple of round_size, at most the
    cap); the 8 it did get no fresh rollouts."""
    RL.train(rl_cfg(tmp_path / "rl", half_learned_add, "rl.max_steps=2"))
    D.train(distill_cfg(tmp_path / "d", tmp_path / "rl" / "model", f"ledger.path={tmp_path / 'rl' / 'ledger.sqlite'}",
                        "ledger.parent=auto", "passrate.adaptive=true", "passrate.max_generations=8",
                        "distill.stages=[{name: r, loss_type: reverse_kl, max_steps: 2, weighting: beta, "
                        "passrate_source: ledger}]"))
    led = Ledger(tmp_path / "rl" / "ledger.sqlite")
    fresh = led.counts(model=f"{(tmp_path / 'd').resolve()}:student", stage="0:r")
    parent = {i for i, _ in led.counts(stage="rl").items()}
    assert len(fresh) == 24 and not set(fresh) & parent
    trials = [k for _, k in fresh.values()]
    assert all(k % 2 == 0 and 2 <= k <= 8 for k in trials) and len(set(trials)) > 1, trials
