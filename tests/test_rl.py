"""``paced rl`` end to end on tiny models: every advantage x loss_type, PPO, dynamic sampling,
prompt weighting and frontier selection (skip, allocate, adaptive), the ledger, reward-function
errors, bad configs and exact resume (under every selection rule)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paced.config import ConfigError, RLConfig, load_config
from paced.ledger import Ledger
from paced.runlog import read_jsonl
from paced.train import rl as RL

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"


@pytest.fixture(scope="module")
def policy(half_learned_add):
    """tests/conftest.py: groups of mixed success exist."""
    return half_learned_add


def rl_cfg(run_dir, policy, *overrides):
    return load_config(RLConfig, SMOKE / "rl.yaml", [
        f"policy.path={policy}", "policy.preset=null", "data.train=[{source: add, n: 32, difficulty: 1}]",
        "run.progress=false", *overrides], run_dir=run_dir)


def metrics(run_dir):
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


# every ADVANTAGES and LOSS_TYPES entry in one smoke run each (not the 5 x 4 cross product)
@pytest.mark.parametrize("advantage, loss_type", [("grpo", "grpo"), ("psr", "bnpo"), ("nsr", "dr_grpo"),
                                                  ("w_reinforce", "dapo"), ("ppo", "dapo")])
def test_every_advantage_and_loss_type(tmp_path, policy, advantage, loss_type):
    before = load_file(Path(policy) / "model.safetensors")
    summary = RL.train(rl_cfg(tmp_path, policy, f"rl.advantage={advantage}", f"rl.loss_type={loss_type}",
                              "rl.max_steps=2", "data.eval=[]"))
    assert summary["steps"] == 2
    rows = metrics(tmp_path)
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert any(r["frac_reward_zero_std"] < 1 for r in rows)  # mixed groups: the update is not zero
    for r in rows:  # the update's phases, timed inside it: positive, and together within time_update
        phases = [r["time_forward"], r["time_backward"], r["time_optimizer"]]
        assert min(phases) > 0 and sum(phases) <= r["time_update"] <= r["step_time"]
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if advantage == "ppo":
        assert all("value_loss" in r for r in rows)
        assert (tmp_path / "checkpoints" / "step-2" / "critic.safetensors").exists()
    if advantage == "psr":
        assert all(r["kept_rows"] < 32 for r in rows)  # wrong samples dropped


def test_rollouts_fill_the_ledger(tmp_path, policy):
    RL.train(rl_cfg(tmp_path, policy, "rl.max_steps=2", "data.eval=[]"))
    led = Ledger(tmp_path / "ledger.sqlite")
    counts = led.counts(stage="rl")
    assert sum(k for _, k in counts.values()) == 2 * 32  # 2 steps x 4 prompts x 8 generations
    rows = metrics(tmp_path)
    per_step = [sum(k for _, k in led.counts(stage="rl", step=s).values()) for s in (1, 2)]
    assert per_step == [32, 32]
    assert rows[0]["accuracy"] == pytest.approx(sum(c for c, _ in led.counts(stage="rl", step=1).values()) / 32)


def test_dynamic_sampling_keeps_only_varied_groups(tmp_path, policy, monkeypatch):
    kept = []
    real = RL.policy_loss

    def spy(policy_, critic, b, rows, t, *a, **k):
        kept.append(t.adv[rows].clone())
        return real(policy_, critic, b, rows, t, *a, **k)

    monkeypatch.setattr(RL, "policy_loss", spy)
    RL.train(rl_cfg(tmp_path, policy, "rl.advantage=grpo", "rl.dynamic_sampling=true",
                    "rl.max_sampling_rounds=6", "rl.max_steps=2", "data.eval=[]"))
    rows = metrics(tmp_path)
    assert all(r["groups"] <= 4 for r in rows)  # 2 x 16 completions = 4 groups of 8
    assert any(r["sampling_rounds"] > 1 for r in rows) or all(r["frac_reward_zero_std"] == 0 for r in rows)
    for a in kept:  # grpo advantages of an all-equal group are exactly 0: none may remain
        groups = a.view(-1, 8)
        assert (groups.abs().sum(-1) > 0).all()


def test_prompt_weighting_uses_the_ledger(tmp_path, policy):
    cfg = rl_cfg(tmp_path, policy, "rl.prompt_weighting=hard_filter", "rl.max_steps=3", "data.eval=[]")
    for attempt in range(2):  # a second run in the same directory starts from a clean slate ...
        if attempt:               # ... once the first one's checkpoints are gone (else: refused)
            with pytest.raises(ValueError, match="holds checkpoints of an earlier run .* --resume"):
                RL.train(cfg)
            shutil.rmtree(tmp_path / "checkpoints")
        RL.train(cfg)
        rows = metrics(tmp_path)
        assert rows[0]["mean_prompt_weight"] == 1.0        # nothing tried yet: p̂ = 1/2 everywhere
        assert rows[-1]["mean_prompt_weight"] < 1.0        # tried prompts at p̂ = 0 or 1 lose their weight


SELECT = {"skip": ["rl.prompt_selection=skip", "rl.skip_threshold=0.5", "rl.skip_readmit=0.2"],
          "allocate": ["rl.prompt_selection=allocate", "rl.rollout_budget=30", "rl.min_group=3", "rl.max_group=12"],
          "adaptive": ["rl.prompt_selection=adaptive", "rl.adaptive_round=2", "rl.adaptive_cap=8"]}
SMALL_POOL = "data.train=[{source: add, n: 8, difficulty: 1}]"   # seen again from step 3 (4 prompts a step)


@pytest.mark.parametrize("rule", list(SELECT))
def test_frontier_selection_spends_and_logs(tmp_path, policy, rule, monkeypatch):
    sizes, real = [], RL.pack_batch
    monkeypatch.setattr(RL, "pack_batch", lambda groups, *a: sizes.append(
        [(len(g["completions"]), sum(g["correct"]), sum(map(len, g["completions"]))) for g in groups])
        or real(groups, *a))
    RL.train(rl_cfg(tmp_path, policy, "rl.advantage=grpo", *SELECT[rule], SMALL_POOL, "rl.max_steps=4",
                    "data.eval=[]"))
    rows, led = metrics(tmp_path), Ledger(tmp_path / "ledger.sqlite")
    for step, (r, groups) in enumerate(zip(rows, sizes), 1):
        trials = sum(k for _, k in led.counts(stage="rl", step=step).values())
        assert r["rollouts"] == trials == r["rollouts_total"] - sum(x["rollouts"] for x in rows[:step - 1])
        # no dynamic sampling: the batch is every group rolled; verifier rewards agree iff c in {0, n}
        assert r["rollouts_zero_variance"] == sum(n for n, c, _ in groups if c in (0, n))
        assert r["rollout_tokens"] == sum(t for _, _, t in groups)
        groups = [(n, c) for n, c, _ in groups]
        if groups:
            assert r["informative_group_share"] == pytest.approx(sum(0 < c < n for n, c in groups) / len(groups))
        if rule == "allocate":   # the budget exactly, in groups of 3..12
            assert sum(n for n, _ in groups) == 30 and all(3 <= n <= 12 for n, _ in groups)
            assert r["prompts_unallocated"] == 8 - len(groups)
        if rule == "adaptive":   # whole rounds of 2; short of the cap only once both outcomes are in
            assert all(n % 2 == 0 and n <= 8 and (n == 8 or 0 < c < n) for n, c in groups)
    if rule == "skip":           # readmit 0.2: what was rolled out had low risk, or was re-admitted
        assert sum(r["prompts_skipped"] for r in rows) > 0 and rows[0]["prompts_skipped"] == 0  # nothing known yet


def test_skip_admits_only_low_risk_prompts_without_readmission(tmp_path, policy):
    from paced.posterior import beta_params, zero_variance_prob
    RL.train(rl_cfg(tmp_path, policy, "rl.prompt_selection=skip", "rl.skip_threshold=0.5", "rl.skip_readmit=0",
                    SMALL_POOL, "rl.max_steps=4", "data.eval=[]"))
    led, rows = Ledger(tmp_path / "ledger.sqlite"), metrics(tmp_path)
    for step in range(2, 5):
        before = led.counts(stage="rl", before_step=step)
        for pid in led.counts(stage="rl", step=step):
            c, k = before.get(pid, (0, 0))
            assert zero_variance_prob(*beta_params(c, k), 8) < 0.5, (step, pid, c, k)
    assert sum(r["prompts_skipped"] for r in rows) > 0


def test_resume_equals_uninterrupted(tmp_path, policy, killed_at_update):
    common = ["rl.max_steps=5", "run.save_steps=2", "run.save_total_limit=0", "rl.num_iterations=2",
              "rl.dynamic_sampling=true", "rl.advantage=grpo", "data.eval=[]"]
    killed_and_resumed(tmp_path, policy, killed_at_update, common, 6)  # 2 updates a step: dies in step 3
    assert [r["step"] for r in metrics(tmp_path / "crash")] == [1, 2, 3, 4, 5]


def killed_and_resumed(tmp_path, policy, killed_at_update, common, update: int) -> None:
    """One run straight through, one killed at ``update`` (after checkpoint step-2) and resumed:
    the same weights, and the same ledger (the killed run's rows past the checkpoint were
    dropped, then redone)."""
    RL.train(rl_cfg(tmp_path / "full", policy, *common))
    crashed = rl_cfg(tmp_path / "crash", policy, *common)
    killed_at_update(lambda: RL.train(crashed), update)
    assert (tmp_path / "crash" / "checkpoints" / "step-2").exists()
    RL.train(crashed, resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert Ledger(tmp_path / "full" / "ledger.sqlite").counts(stage="rl") == \
        Ledger(tmp_path / "crash" / "ledger.sqlite").counts(stage="rl")


@pytest.mark.parametrize("rule", ["beta", "hard_filter", *SELECT, "frontier"])
def test_resume_equals_uninterrupted_with_every_selection(tmp_path, policy, killed_at_update, rule):
    extra = {**SELECT, "beta": ["rl.prompt_selection=beta", "rl.dynamic_sampling=true"],
             "hard_filter": ["rl.prompt_selection=hard_filter"],
             "frontier": ["rl.prompt_selection=frontier", "rl.skip_readmit=0.2", "rl.guide.enabled=true",
                          "data.train=[{source: add, n: 8, difficulty: [1, 2], hint_level: 2}]"],
             "skip": [*SELECT["skip"], "rl.dynamic_sampling=true"]}[rule]   # GRESO sits on dynamic sampling
    common = ["rl.max_steps=5", "run.save_steps=2", "run.save_total_limit=0", "rl.advantage=grpo", SMALL_POOL,
              "data.eval=[]", *extra]
    killed_and_resumed(tmp_path, policy, killed_at_update, common, 3)   # dies in step 3, after step-2
    full, crash = metrics(tmp_path / "full"), metrics(tmp_path / "crash")
    assert [r["rollouts_total"] for r in full] == [r["rollouts_total"] for r in crash]


def test_ppo_resume_restores_the_critic(tmp_path, policy, killed_at_update):
    common = ["rl.advantage=ppo", "rl.max_steps=4", "run.save_steps=2", "data.eval=[]"]
    RL.train(rl_cfg(tmp_path / "full", policy, *common))
    crashed = rl_cfg(tmp_path / "crash", policy, *common)
    killed_at_update(lambda: RL.train(crashed), 3)
    RL.train(crashed, resume=True)
    a = load_file(tmp_path / "full" / "checkpoints" / "step-4" / "critic.safetensors")
    b = load_file(tmp_path / "crash" / "checkpoints" / "step-4" / "critic.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kl_to_reference_and_entropy_bonus(tmp_path, policy):
    RL.train(rl_cfg(tmp_path, policy, "rl.beta=0.1", "rl.entropy_coef=0.01", "rl.num_iterations=2",
                    "rl.max_steps=2", "data.eval=[]"))
    rows = metrics(tmp_path)
    assert rows[0]["kl"] >= 0 and rows[-1]["kl"] > 0      # the policy moved away from the reference
    assert all(r["entropy"] > 0 for r in rows)


def test_ewc_and_classp_in_rl(tmp_path, policy):
    RL.train(rl_cfg(tmp_path / "ewc", policy, "regularizer.name=ewc", "regularizer.ewc_lambda=10",
                    "regularizer.fisher_data=[{source: add, n: 16, difficulty: 1}]", "rl.max_steps=2",
                    "data.eval=[]"))
    rows = metrics(tmp_path / "ewc")
    assert rows[0]["ewc_penalty"] == 0 and rows[1]["ewc_penalty"] > 0  # anchored at the start
    assert (tmp_path / "ewc" / "ewc.pt").exists()
    RL.train(rl_cfg(tmp_path / "classp", policy, "optim.name=classp", "optim.lr=0.01", "rl.max_steps=1",
                    "data.eval=[]"))


def test_a_bad_reward_function_is_named(tmp_path, policy):
    bad = tmp_path / "my_rewards.py"
    bad.write_text("def short(prompts, completions, **kw):\n    return [1.0]\n")
    with pytest.raises(ValueError, match="short"):
        RL.train(rl_cfg(tmp_path / "run", policy, f"rl.reward_funcs=['{bad}:short']", "data.eval=[]"))


def test_user_reward_function_trains(tmp_path, policy):
    good = tmp_path / "len_reward.py"
    good.write_text("def short_is_good(prompts, completions, **kw):\n"
                    "    return [1.0 if len(c) <= 2 else 0.0 for c in completions]\n")
    RL.train(rl_cfg(tmp_path / "run", policy, f"rl.reward_funcs=['{good}:short_is_good', verifier]",
                    "rl.reward_weights=[0.5, 1.0]", "rl.advantage=grpo", "rl.max_steps=1", "data.eval=[]"))
    assert metrics(tmp_path / "run")[0]["reward"] >= 0


@pytest.mark.parametrize("override, message", [
    ("rl.per_device_train_batch_size=6", "multiple of rl.num_generations"),
    ("rl.reward_weights=[1.0, 2.0]", "2 weights for 1 reward functions"),
    ("rl.reward_funcs=[nonsense]", "rl.reward_funcs[0]"),
    ("rl.advantage=reinforce", "rl.advantage"),
    ("rl.loss_typ=dapo", "did you mean 'rl.loss_type'"),
    ("rl.prompt_selection=knapsack", "rl.prompt_selection"),
    (("rl.prompt_selection=allocate", "rl.dynamic_sampling=true"), "drop rl.dynamic_sampling"),
    (("rl.prompt_selection=adaptive", "rl.guide.enabled=true"), "rl.guide replaces"),
    (("rl.prompt_selection=allocate", "rl.rollout_budget=33", "rl.min_group=4", "rl.max_group=4"),
     "cannot be split exactly"),
    (("rl.prompt_selection=allocate", "rl.min_group=17"), "more than max_group 16"),
    (("rl.prompt_selection=adaptive", "rl.adaptive_round=3"), "not a multiple of adaptive_round 3"),
    ("rl.skip_readmit=1.5", "above the maximum"),
    ("rl.min_group=1", "below the minimum"),
])
def test_bad_config_is_named(tmp_path, policy, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rl_cfg(tmp_path, policy, *([override] if isinstance(override, str) else override))


@pytest.mark.slow
def test_cli_rl_with_eval(tmp_path):
    out = subprocess.run([sys.executable, "-m", "paced.cli", "rl", "--config", str(SMOKE / "rl.yaml"),
                          "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3 and "eval/pass@1" in summary["after"]
    assert (tmp_path / "checkpoints" / "step-3").exists()
