"""Frontier prompt selection (paced/train/frontier.py) and groups of unequal size, against hand
computations and counting: skip's re-admission, the stream it walks, ragged advantages and the
loss normalisers on a hand-made batch, the renamed rl.prompt_weighting."""
import math

import numpy as np
import pytest
import torch

from paced.config import ConfigError, RLConfig, load_config
from paced.posterior import zero_variance_prob
from paced.rl_losses import LOSS_TYPES, ragged_advantages, ragged_has_variance
from paced.train.batches import batch_indices
from paced.train.frontier import posterior, route, skip_draw
from paced.train.rl_batch import pack_batch, targets_for


def test_skip_readmits_with_its_probability():
    # every prompt is certain to give a zero-variance group: only re-admission lets one through
    n, count, readmit = 50, 10, 0.25
    p_zv = np.ones(n)
    looked, admitted = 0, 0
    for step in range(400):
        idx, end, skipped = skip_draw(n, count, 0, 0, (step, 0), p_zv, 0.9, readmit)
        assert len(idx) + skipped == end     # every prompt looked at is admitted or skipped
        looked, admitted = looked + end, admitted + len(idx)
    share = admitted / looked                # binomial: sd = sqrt(.25 * .75 / looked) < 0.005
    assert abs(share - readmit) < 4 * math.sqrt(readmit * (1 - readmit) / looked)
    # readmit 0: nothing gets in; the walk stops after an epoch plus a chunk
    idx, end, skipped = skip_draw(n, count, 0, 0, (0, 0), p_zv, 0.9, 0.0)
    assert idx == [] and skipped == end and n <= end <= n + 2 * count


def test_skip_walks_the_uniform_stream():
    n, count = 12, 4
    stream = batch_indices(n, 7, 0, 3 * n)
    risky = {stream[1], stream[2], stream[5]}                       # skipped (readmit 0) ...
    p_zv = np.array([1.0 if i in risky else 0.2 for i in range(n)])  # ... the rest always admitted
    idx, end, skipped = skip_draw(n, count, 7, 0, (3, 1), p_zv, 0.5, 0.0)
    assert idx == [stream[0], stream[3], stream[4], stream[6]] and end == 7 and skipped == 3
    # the next round starts where this one stopped; a pure function of its arguments (resume)
    nxt = skip_draw(n, count, 7, end, (3, 2), p_zv, 0.5, 0.0)
    assert nxt[0] == [s for s in stream[7:] if s not in risky][:4]
    assert skip_draw(n, count, 7, 0, (3, 1), p_zv, 0.5, 0.0) == (idx, end, skipped)


def test_untried_prompts_have_the_uniform_prior():
    a, b = posterior(np.array([0.0, 3.0]), np.array([0.0, 4.0]))
    assert a.tolist() == [1.0, 4.0] and b.tolist() == [1.0, 2.0]
    assert zero_variance_prob(a[:1], b[:1], 8)[0] == pytest.approx(2 / 9)   # P(X=0)+P(X=8) = 2/(8+1)


def test_ragged_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])             # groups of 2 and 4
    a, keep = ragged_advantages(r, [2, 4], "grpo")
    s1, s2 = math.sqrt(0.5), 0.5                                 # unbiased stds: [1, 0] and [1, 1, 1, 0]
    hand = [0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), *[0.25 / (s2 + 1e-4)] * 3, -0.75 / (s2 + 1e-4)]
    assert a.tolist() == pytest.approx(hand) and keep.all()
    a, _ = ragged_advantages(r, [2, 4], "grpo", scale_rewards="batch")
    sd = float(r.std())                                          # the whole batch's std
    assert a.tolist() == pytest.approx([0.5 / (sd + 1e-4), -0.5 / (sd + 1e-4), *[0.25 / (sd + 1e-4)] * 3,
                                        -0.75 / (sd + 1e-4)])
    a, keep = ragged_advantages(r, [2, 4], "nsr")
    assert a.tolist() == [0, -1, 0, 0, 0, -1] and keep.tolist() == [False, True, False, False, False, True]
    assert ragged_has_variance(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]), [2, 3]).tolist() == [False, True]
    with pytest.raises(ValueError, match="do not split"):
        ragged_advantages(r, [2, 3], "grpo")


class _OneProcess:
    device = torch.device("cpu")

    def reduce(self, t, op):
        return t


def _hand_batch(micro_size: int, advantage: str, adv_kw=None):
    """Groups of 2 and 4 rows, rewards [1, 0] and [1, 1, 1, 0], completion lengths 1, 2 | 3, 1, 2, 2."""
    lengths, rewards = [[1, 2], [3, 1, 2, 2]], [[1.0, 0.0], [1.0, 1.0, 1.0, 0.0]]
    groups = [{"prompt": [5, 6], "rewards": torch.tensor(r), "correct": [x > 0 for x in r],
               "completions": [[7] * n for n in ls], "sample_logp": [torch.zeros(n) for n in ls], "hinted": False}
              for r, ls in zip(rewards, lengths)]
    batch = pack_batch(groups, micro_size, 0, "cpu")
    t = targets_for(_OneProcess(), None, None, None, batch, advantage, adv_kw or {}, False, 1.0, 1.0, False, 1.0,
                    False, 10)
    return batch, t


@pytest.mark.parametrize("micro_size", [6, 4])      # 4: the second group straddles two micro-batches
def test_loss_normalisers_on_unequal_groups_by_hand(micro_size):
    batch, t = _hand_batch(micro_size, "w_reinforce", {"lam": 0.1})
    assert batch.sizes == [2, 4] and batch.N == 6 and t.adv.tolist() == pytest.approx([0.1, -1, 0.1, 0.1, 0.1, -1])
    assert t.norm["num_sequences"] == 6 and t.norm["num_tokens"] == 11
    # ratio 1: the surrogate is −A on every completion token; each row counts once, whatever its group
    loss = {}
    for name, fn in LOSS_TYPES.items():
        loss[name] = 0.0
        for rows, (ids, mask, pos, P, R) in zip(batch.micro, batch.packed):
            m = mask[:, P:].float()
            loss[name] += float(fn(-t.adv[rows][:, None] * torch.ones_like(m), m, **t.norm))
    seq_sum = -(0.1 - 1 + 0.1 + 0.1 + 0.1 - 1)                     # Σ_i −A_i = 1.6
    tok_sum = -(0.1 * 1 - 1 * 2 + 0.1 * 3 + 0.1 * 1 + 0.1 * 2 - 1 * 2)   # Σ_i −A_i · len_i = 3.3
    assert loss["grpo"] == pytest.approx(seq_sum / 6)             # per-sequence means, / 6 rows
    assert loss["dapo"] == pytest.approx(tok_sum / 11)            # token mean over the batch
    assert loss["dr_grpo"] == pytest.approx(tok_sum / (6 * 10))   # / (rows x max_completion_length)
    if micro_size == 6:   # bnpo: token mean per micro-batch (one here)
        assert loss["bnpo"] == pytest.approx(tok_sum / 11)
    else:                 # rows 0-3 (8 tokens), rows 4-5 (4 tokens), each / 2 micro-batches
        first = -(0.1 * 1 - 1 * 2 + 0.1 * 3 + 0.1 * 1)
        assert loss["bnpo"] == pytest.approx((first / 7 + -(0.1 * 2 - 1 * 2) / 4) / 2)


def test_grpo_targets_on_unequal_groups():
    _, t = _hand_batch(6, "grpo", {"scale_rewards": "group"})
    s1, s2 = math.sqrt(0.5), 0.5
    assert t.adv.tolist() == pytest.approx([0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), *[0.25 / (s2 + 1e-4)] * 3,
                                            -0.75 / (s2 + 1e-4)])


def test_old_prompt_weighting_key(capsys):
    base = ["policy.preset=nano", "data.train=[{source: add, n: 8}]"]
    assert load_config(RLConfig, None, [*base, "rl.prompt_weighting=none"]).rl.prompt_selection == "uniform"
    err = capsys.readouterr().err
    assert "'rl.prompt_weighting' is now 'rl.prompt_selection', its value 'none' now 'uniform'" in err
    assert load_config(RLConfig, None, [*base, "rl.prompt_weighting=beta"]).rl.prompt_selection == "beta"
    assert "rl.prompt_weighting" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="rl.prompt_selection"):
        load_config(RLConfig, None, [*base, "rl.prompt_weighting=skip_it"])


@pytest.mark.parametrize("rule", [
    ["rl.prompt_selection=allocate", "rl.rollout_budget=30", "rl.min_group=3", "rl.max_group=12"],
    ["rl.prompt_selection=adaptive", "rl.adaptive_round=2", "rl.adaptive_cap=6"],
    ["rl.prompt_selection=skip", "rl.dynamic_sampling=true", "rl.max_sampling_rounds=2"]])
def test_selection_under_torchrun_two_cpu_processes(tmp_path, rule):
    """allocate, adaptive and skip as DDP over two CPU processes: the rounds' collectives agree
    (no hang), each process spends its own budget, and the ledger holds both processes' rows."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from paced.ledger import Ledger
    root = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    run = tmp_path / "ddp"
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "paced.cli", "rl", "--config",
                           str(root / "configs" / "smoke" / "rl.yaml"), "rl.advantage=grpo", "data.eval=[]", *rule,
                           "--run-dir", str(run)], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    led = Ledger(run / "ledger.sqlite")
    per_step = [sum(k for _, k in led.counts(stage="rl", step=s).values()) for s in (1, 2, 3)]
    totals = [r["rollouts_total"] for r in rows]
    assert per_step == [b - a for a, b in zip([0, *totals], totals)]   # both processes' rollouts
    if "rl.prompt_selection=allocate" in rule:
        assert per_step == [60, 60, 60]                                 # 30 per process, exactly
    if "rl.prompt_selection=adaptive" in rule:   # 4 prompts per process, 2..6 rollouts each
        assert all(16 <= n <= 48 for n in per_step)


def test_the_config_offers_every_rule():
    import typing

    from paced.config import RLCfg
    from paced.config.tools import choices_of
    from paced.train.frontier import Selection
    assert choices_of(typing.get_type_hints(RLCfg)["prompt_selection"]) == typing.get_args(Selection)


def test_frontier_routes_by_hand():
    # G = 8, uniform prior: 16/16 -> Beta(17, 1): P(all 8 pass) = 17/25; 0/16 -> P(all fail) = 17/25;
    # 8/16 -> Beta(9, 9): both ends small; 0/2 -> Beta(1, 3): P(all fail) = 3/11 < 0.5
    a, b = posterior(np.array([16, 0, 0, 8, 0]), np.array([16, 16, 16, 16, 2]))
    assert P_all(a, b) == pytest.approx([17 / 25, 17 / 25])
    skip, hint = route(a, b, np.array([True, True, False, True, True]), 8, 0.5)
    assert skip.tolist() == [True, False, True, False, False]      # all-pass; all-fail without a hint
    assert hint.tolist() == [False, True, False, False, False]     # all-fail with a hint


def P_all(a, b):
    from paced.posterior import moment
    return [moment(a[0], b[0], 8, 0), moment(a[1], b[1], 0, 8)]
