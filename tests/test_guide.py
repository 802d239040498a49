"""Guide (paced/guide.py and ``rl.guide`` in paced/train/rl.py): the hint-corrected ratio and its
shaping on hand-made log-probs, the all-fail trigger, the group replacement (with a scripted
sampler, so that which groups fail is known), that hinted samples are trained under the plain
prompt with the hinted sampler's old log-probs, and smoke runs of Guide-GRPO and Guide-PPO."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paced.config import ConfigError, RLConfig, load_config
from paced.guide import (GAMMA_FLOOR, all_fail, check_hint_template, guided_ratio, guided_surrogate,
                         hint_prompt)
from paced.ledger import Ledger
from paced.rl_losses import clipped_surrogate
from paced.rollout import SAMPLERS, Rollouts
from paced.runlog import read_jsonl
from paced.train import rl as RL

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def test_all_fail_fires_only_when_every_rollout_failed():
    assert all_fail([0, 0, 0, 1, 0, 0, 1, 1, 1], 3).tolist() == [True, False, False]
    assert all_fail(torch.tensor([False, False]), 1).tolist() == [True, True]
    with pytest.raises(ValueError, match="whole number of groups"):
        all_fail([0, 0, 0], 2)


def test_hint_template():
    assert hint_prompt("{prompt}({hint})", "1+2=", "starts 3") == "1+2=(starts 3)"
    assert hint_prompt("{hint}", "1+2=", "Add one and two.") == "Add one and two."
    check_hint_template("Hint: {hint}\n{prompt}")
    for bad, msg in [("{prompt}", "does not use"), ("{prompt}{hint}{answer}", "answer"), ("{hint", "format")]:
        with pytest.raises(ValueError, match=msg):
            check_hint_template(bad)


def _hand_made():
    """3 rows x 4 tokens: rows 0 and 1 hinted, row 2 plain; the last token of row 1 is padding."""
    old = torch.zeros(3, 4)
    log_r = torch.tensor([[-2.0, -1.0, 0.0, 0.5],
                          [-0.3, 1.2, -4.0, 9.0],      # 9.0 sits on padding: must not count
                          [3.0, 3.0, 3.0, 3.0]])       # plain row, huge ratios: must not count
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float)
    hinted = torch.tensor([True, True, False])
    return log_r, old, mask, hinted


def test_gamma_is_the_quantile_of_the_hinted_ratios_only():
    log_r, old, mask, hinted = _hand_made()
    hmask = mask.bool() & hinted[:, None]
    want = torch.quantile(torch.exp(log_r[hmask]), 0.9).item()
    shaped, ratio, g = guided_ratio(log_r, old, hmask, "percentile", quantile=0.9)
    assert g == pytest.approx(want, rel=1e-6)
    assert torch.allclose(shaped, ratio / (ratio + want))
    _, _, median = guided_ratio(log_r, old, hmask, "percentile", quantile=0.5)
    assert median == pytest.approx(torch.exp(log_r[hmask]).median().item(), rel=1e-6)
    _, _, floor = guided_ratio(torch.full((1, 3), -30.0), torch.zeros(1, 3), torch.ones(1, 3))
    assert floor == pytest.approx(GAMMA_FLOOR)                                # ratios e^-30: gamma floored
    _, _, empty = guided_ratio(log_r, old, torch.zeros(3, 4))
    assert empty != empty                                        # no hinted tokens: NaN


def test_the_other_shapings():
    log_r, old, mask, _ = _hand_made()
    r = torch.exp(log_r)
    shaped, _, g = guided_ratio(log_r, old, mask, "constant", gamma=2.0)
    assert g == 2.0 and torch.allclose(shaped, r / (r + 2.0))
    shaped, _, _ = guided_ratio(log_r, old, mask, "power", power=0.5)
    assert torch.allclose(shaped, r.sqrt())
    shaped, _, _ = guided_ratio(log_r, old, mask, "none")
    assert torch.allclose(shaped, r)
    with pytest.raises(ValueError, match="shaping"):
        guided_ratio(log_r, old, mask, "bogus")


def test_hinted_tokens_are_not_clipped_plain_tokens_are():
    # every ratio e^1.5 > 1.2 with A > 0: the clip is active on plain tokens (zero gradient there)
    logp = torch.full((2, 3), 1.5, requires_grad=True)
    old, adv = torch.zeros(2, 3), torch.tensor([[1.0], [1.0]])
    hinted, mask = torch.tensor([True, False]), torch.ones(2, 3)
    per_token, clipped, st = guided_surrogate(logp, old, adv, hinted, mask, "percentile")
    per_token.sum().backward()
    r, g = torch.exp(torch.tensor(1.5)), st["gamma"]
    assert g == pytest.approx(r.item(), rel=1e-6)                 # all hinted ratios equal
    assert clipped[0].tolist() == [False] * 3 and clipped[1].tolist() == [True] * 3
    assert torch.allclose(per_token[0], -(r / (r + g)).expand(3))
    # d/dlogp of −r/(r+γ) = −γ r/(r+γ)²: unclipped, non-zero
    assert torch.allclose(logp.grad[0], (-g * r / (r + g) ** 2).expand(3))
    assert torch.equal(logp.grad[1], torch.zeros(3))
    assert st["hinted_tokens"] == 3 and st["log_ratio"] == pytest.approx(1.5)


def test_without_hinted_rows_it_is_the_clipped_surrogate():
    torch.manual_seed(0)
    logp, old, adv = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 1)
    per_token, clipped, st = guided_surrogate(logp, old, adv, torch.zeros(4, dtype=torch.bool), torch.ones(4, 5),
                                              epsilon_low=0.2, epsilon_high=0.28)
    want, want_clipped = clipped_surrogate(logp, old, adv, 0.2, 0.28)
    assert torch.equal(per_token, want) and torch.equal(clipped, want_clipped)
    assert st["hinted_tokens"] == 0 and st["gamma"] != st["gamma"]


# ---------------------------------------------------------------------------------------------
# The loop, with a scripted sampler
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy(half_learned_add):
    return half_learned_add


def rl_cfg(run_dir, policy, *overrides):
    return load_config(RLConfig, SMOKE / "rl.yaml", [
        f"policy.path={policy}", "policy.preset=null", "data.eval=[]", "run.progress=false",
        "data.train=[{source: add, n: 32, difficulty: 1, hint_level: 1}]", "rl.advantage=grpo",
        "rl.guide.enabled=true", "rl.dynamic_sampling=true", "rl.max_sampling_rounds=1", "rl.max_steps=1",
        *overrides], run_dir=run_dir)


class Scripted:
    """A sampler that knows the answers: plain prompts of even-numbered problems fail all 8
    rollouts, odd ones succeed on half; hinted prompts succeed on half. Log-probs mark the
    prompt kind: -0.5 on hinted rows, -0.1 on plain ones. Records the prompts it was given."""

    def __init__(self, policy, pool):
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(policy)
        self.by_prompt = {e.prompt: (int(e.id.rsplit("/", 1)[1]), e.answer) for e in pool}
        self.calls = []

    def __call__(self, model, prompt_ids, params, *, eos_token_id, pad_token_id, batch_size=0, progress=False):
        texts = [self.tok.decode(p, skip_special_tokens=True) for p in prompt_ids]
        self.calls.append(texts)
        rows, logps = [], []
        for t in texts:
            hinted = "(starts" in t
            index, answer = self.by_prompt[t.split("(")[0]]
            for j in range(params.n):
                good = j % 2 == 0 and (hinted or index % 2 == 1)
                wrong = "9" * len(answer) if answer != "9" * len(answer) else "8" * len(answer)
                stop = eos_token_id if isinstance(eos_token_id, int) else eos_token_id[0]
                ids = self.tok(answer if good else wrong, add_special_tokens=False).input_ids + [stop]
                rows.append(ids)
                logps.append(-0.5 if hinted else -0.1)
        L = max(map(len, rows))
        ids = torch.full((len(rows), L), pad_token_id)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        return Rollouts(prompt_ids=prompt_ids, prompt_index=torch.arange(len(texts)).repeat_interleave(params.n),
                        completion_ids=ids, completion_mask=mask,
                        sample_logp=torch.tensor(logps)[:, None] * mask,
                        finished=torch.ones(len(rows), dtype=torch.bool))


def test_trigger_replacement_and_scoring_without_the_hint(tmp_path, policy, monkeypatch):
    from paced.tasks import load_sources
    cfg = rl_cfg(tmp_path, policy)
    scripted = Scripted(policy, load_sources(cfg.data.train))
    monkeypatch.setitem(SAMPLERS, "hf", scripted)
    seen = []
    real = RL.policy_loss

    def spy(policy_, critic, b, rows, t, *a, **k):
        seen.append((b[0].clone(), b[3], t.hinted[rows].clone(), t.old_logp[rows].clone()))
        return real(policy_, critic, b, rows, t, *a, **k)

    monkeypatch.setattr(RL, "policy_loss", spy)
    RL.train(cfg)
    plain, hinted_call = scripted.calls                         # one plain round, one hinted call
    even = [t for t in plain if scripted.by_prompt[t][0] % 2 == 0]
    assert [t.split("(")[0] for t in hinted_call] == even       # the trigger: exactly the all-fail groups
    assert all(t.endswith(")") and "(starts" in t for t in hinted_call)
    row = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert row["guide/guided_groups"] == len(even) and row["guide/solved_with_hint"] == 1.0
    assert row["groups"] == len(plain) == 4                      # every group kept: all now mixed
    assert row["guide/hinted_groups_kept"] == len(even)
    assert row["rollouts"] == 8 * (len(plain) + len(even))       # hinted rollouts count
    assert row["all_fail_prompts"] == len(even) and row["all_fail_now_solved"] == 0
    n_hinted = 0
    for ids, P, hinted, old in seen:
        assert len(hinted) % 8 == 0                              # whole groups of num_generations
        assert hinted.view(-1, 8).all(-1).eq(hinted.view(-1, 8).any(-1)).all()
        text = [scripted.tok.decode(p, skip_special_tokens=True) for p in ids[:, :P]]
        assert not any("(" in t for t in text)                   # trained under the plain prompt
        lp = old[:, 0]
        assert torch.allclose(lp[hinted], torch.tensor(-0.5)) and torch.allclose(lp[~hinted], torch.tensor(-0.1))
        n_hinted += int(hinted.sum())
    assert n_hinted == 8 * len(even)
    led = Ledger(tmp_path / "ledger.sqlite")
    assert sum(c for c, _ in led.counts(stage="rl").values()) == 4 * (len(plain) - len(even))  # plain only
    assert sum(k for _, k in led.counts(stage="rl:hinted").values()) == 8 * len(even)


@pytest.mark.parametrize("guide", [False, True])
def test_skip_keeps_the_all_fail_prompts_guide_can_rescue(tmp_path, policy, monkeypatch, guide):
    """Scripted: even problems fail every plain rollout, odd ones succeed on half. On a pool of 8
    seen again from step 3, skip (no re-admission) leaves the even ones out, unless Guide is on:
    then an all-fail group is not waste (it is re-rolled with the hint), only all-pass would be."""
    from paced.tasks import load_sources
    cfg = rl_cfg(tmp_path, policy, f"rl.guide.enabled={str(guide).lower()}", "rl.dynamic_sampling=false",
                 "rl.prompt_selection=skip", "rl.skip_threshold=0.5", "rl.skip_readmit=0", "rl.max_steps=4",
                 "data.train=[{source: add, n: 8, difficulty: 1, hint_level: 1}]")
    scripted = Scripted(policy, load_sources(cfg.data.train))
    monkeypatch.setitem(SAMPLERS, "hf", scripted)
    RL.train(cfg)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    plain = [[scripted.by_prompt[t.split("(")[0]][0] for t in call] for call in scripted.calls
             if "(starts" not in call[0]]
    assert rows[0]["prompts_skipped"] == rows[1]["prompts_skipped"] == 0       # first epoch: nothing known
    if guide:
        assert all(r["prompts_skipped"] == 0 for r in rows)
        assert sum(i % 2 == 0 for i in plain[2] + plain[3]) > 0
        assert all(r["rollouts_zero_variance"] == 8 * r["guide/guided_groups"] for r in rows)  # plain all-fail
    else:
        assert rows[2]["prompts_skipped"] + rows[3]["prompts_skipped"] > 0
        assert all(i % 2 == 1 for i in plain[2] + plain[3])                  # the all-fail ones are left out
        assert [r["informative_group_share"] for r in rows[2:]] == [1.0, 1.0]


def test_frontier_routes_hopeless_prompts_straight_to_their_hints(tmp_path, policy, monkeypatch):
    """Scripted as above, frontier selection, no re-admission: after the first epoch the even
    problems (0 of 8 plain, so P(a group all fails) = 9/17 ≥ 0.5) get only hinted rollouts: no
    plain group is paid for them, and no rollout of steps 3-4 is in a zero-variance group."""
    from paced.tasks import load_sources
    cfg = rl_cfg(tmp_path, policy, "rl.dynamic_sampling=false", "rl.prompt_selection=frontier",
                 "rl.skip_threshold=0.5", "rl.skip_readmit=0", "rl.max_steps=4",
                 "data.train=[{source: add, n: 8, difficulty: 1, hint_level: 1}]")
    scripted = Scripted(policy, load_sources(cfg.data.train))
    monkeypatch.setitem(SAMPLERS, "hf", scripted)
    RL.train(cfg)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    index = lambda call: [scripted.by_prompt[t.split("(")[0]][0] for t in call]  # noqa: E731
    plain = [index(c) for c in scripted.calls if "(starts" not in c[0]]
    hinted = [index(c) for c in scripted.calls if "(starts" in c[0]]
    assert [r["prompts_hint_routed"] for r in rows[:2]] == [0, 0]                  # first epoch: nothing known
    assert all(i % 2 == 1 for i in plain[2] + plain[3])                            # even ones: no plain group
    assert hinted[2] + hinted[3] and all(i % 2 == 0 for i in hinted[2] + hinted[3])
    assert [r["prompts_hint_routed"] for r in rows[2:]] == [len(hinted[2]), len(hinted[3])]
    assert [r["rollouts_zero_variance"] for r in rows[2:]] == [0, 0]
    assert all(r["rollouts"] == 8 * r["groups"] for r in rows[2:])                 # one group per prompt


def test_the_frontier_preset_runs_on_a_passrate_runs_ledger(tmp_path, policy):
    """configs/rl/frontier.yaml as a user runs it: p-hat measured by paced passrate first, then
    one rl run reading it (ledger.parent auto) that routes the hopeless prompts to their hints."""
    from paced.config import PassrateConfig
    from paced.passrate import run as passrate
    pool = "data.train=[{source: add, n: 16, difficulty: [1, 3], hint_level: 2}]"
    ledger = f"ledger.path={tmp_path / 'ledger.sqlite'}"
    passrate(load_config(PassrateConfig, ROOT / "configs" / "passrate.yaml",
                         [f"model.path={policy}", pool, ledger, "passrate.num_generations=16", "run.progress=false"],
                         run_dir=tmp_path / "p"))
    cfg = load_config(RLConfig, ROOT / "configs" / "rl" / "frontier.yaml", [
        f"policy.path={policy}", pool, ledger, "data.eval=[]", "rl.max_steps=2", "rl.gradient_accumulation_steps=1",
        "rl.per_device_train_batch_size=32", "sampling.max_completion_length=8", "run.progress=false",
        "rl.guide.hint_template={prompt}(starts {hint})"], run_dir=tmp_path / "rl")
    RL.train(cfg)
    rows = read_jsonl(tmp_path / "rl" / "metrics.jsonl")
    assert sum(r["prompts_hint_routed"] for r in rows) > 0          # 3-digit sums: p-hat 0, hints given
    assert all(r["guide/guided_groups"] >= r["prompts_hint_routed"] for r in rows)


def test_frontier_needs_guide(tmp_path, policy):
    with pytest.raises(ConfigError, match=r"rl.prompt_selection: frontier routes likely all-fail prompts to Guide"):
        rl_cfg(tmp_path, policy, "rl.guide.enabled=false", "rl.prompt_selection=frontier")


def test_without_guide_the_failed_groups_are_dropped(tmp_path, policy, monkeypatch):
    from paced.tasks import load_sources
    cfg = rl_cfg(tmp_path, policy, "rl.guide.enabled=false")
    scripted = Scripted(policy, load_sources(cfg.data.train))
    monkeypatch.setitem(SAMPLERS, "hf", scripted)
    RL.train(cfg)
    assert len(scripted.calls) == 1
    row = read_jsonl(tmp_path / "metrics.jsonl")[0]
    even = sum(scripted.by_prompt[t][0] % 2 == 0 for t in scripted.calls[0])
    assert row["groups"] == 4 - even and "guide/guided_groups" not in row
    assert row["all_fail_prompts"] == even                       # the baseline logs it too


# ---------------------------------------------------------------------------------------------
# Smoke runs with the real sampler (difficulty 2: the half-learned model fails whole groups)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("advantage", ["grpo", "ppo"])
def test_guide_grpo_and_guide_ppo_train(tmp_path, policy, advantage):
    before = load_file(Path(policy) / "model.safetensors")
    RL.train(rl_cfg(tmp_path, policy, f"rl.advantage={advantage}", "rl.max_steps=3", "rl.max_sampling_rounds=2",
                    "data.train=[{source: add, n: 32, difficulty: [1, 2], hint_level: 2}]"))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 3 and sum(r["guide/guided_groups"] for r in rows) > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if advantage == "ppo":
        assert all("value_loss" in r for r in rows)


def test_guide_resume_equals_uninterrupted(tmp_path, policy, killed_at_update):
    common = ["rl.max_steps=4", "run.save_steps=2", "run.save_total_limit=0", "rl.max_sampling_rounds=2",
              "data.train=[{source: add, n: 32, difficulty: [1, 2], hint_level: 2}]"]
    RL.train(rl_cfg(tmp_path / "full", policy, *common))
    crashed = rl_cfg(tmp_path / "crash", policy, *common)
    killed_at_update(lambda: RL.train(crashed), 3)
    RL.train(crashed, resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    full, crash = (read_jsonl(tmp_path / d / "metrics.jsonl")[-1] for d in ("full", "crash"))
    for key in ("rollouts_total", "all_fail_prompts", "all_fail_now_solved"):
        assert full[key] == crash[key], key
    for stage in ("rl", "rl:hinted"):
        assert Ledger(tmp_path / "full" / "ledger.sqlite").counts(stage=stage) == \
            Ledger(tmp_path / "crash" / "ledger.sqlite").counts(stage=stage)


def test_rollout_budget_stops_the_run(tmp_path, policy):
    summary = RL.train(rl_cfg(tmp_path, policy, "rl.max_steps=50", "rl.max_rollouts=70", "rl.guide.enabled=false"))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert summary["steps"] == len(rows) == 3                    # 32 rollouts a step: 32, 64, 96 >= 70
    assert rows[-1]["rollouts_total"] == 96


@pytest.mark.parametrize("override, message", [
    ("rl.guide.hint_template={prompt}", r"rl\.guide\.hint_template: "),
    ("data.train=[{source: add, n: 8, hint_level: 0}]", "hint_level 0"),
])
def test_bad_guide_config_is_named(tmp_path, policy, override, message):
    with pytest.raises(ConfigError, match=message):
        rl_cfg(tmp_path, policy, override)


def test_data_without_hints_is_refused(tmp_path, policy):
    data = tmp_path / "nohints.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    with pytest.raises(ValueError, match="no training prompt has a hint"):
        RL.train(rl_cfg(tmp_path, policy, f"data.train=[{{source: {data}, verifier: exact}}]"))


def test_hints_from_a_data_file_go_through_the_template(tmp_path, policy, monkeypatch):
    import json

    from paced.tasks.synthetic import generate
    rows = [{"prompt": e.prompt, "answer": e.answer, "hint": e.hint, "id": f"q{i}"}
            for i, e in enumerate(generate("add", 16, 5, 2, hint_level=2))]
    data = tmp_path / "hinted.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    real, prompts = SAMPLERS["hf"], []

    def recording(model, prompt_ids, params, **kw):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(policy)
        prompts.extend(tok.decode(p, skip_special_tokens=True) for p in prompt_ids)
        return real(model, prompt_ids, params, **kw)

    monkeypatch.setitem(SAMPLERS, "hf", recording)
    RL.train(rl_cfg(tmp_path / "run", policy, f"data.train=[{{source: {data}, verifier: exact}}]",
                    "rl.guide.hint_template='{hint}|{prompt}'", "rl.max_steps=2"))
    hinted = [p for p in prompts if "|" in p]
    assert hinted, "a half-learned model fails whole groups of 2-digit sums: some must be guided"
    assert set(hinted) <= {f"{r['hint']}|{r['prompt']}" for r in rows}
    guided = sum(r["guide/guided_groups"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert len(hinted) == guided
