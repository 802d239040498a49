"""RL math (paced/rl_losses.py) against hand-made tables, numpy and slow pure-Python references."""
import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from paced.rl_losses import (ADVANTAGES, LOSS_TYPES, clipped_surrogate, entropy_from_logits, gae,
                             group_has_variance, grpo_advantages, kl_k3, nsr_advantages,
                             psr_advantages, reward_zero_std_share, terminal_rewards, value_loss,
                             w_reinforce_advantages, whiten)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, one thread


# 3 groups of n = 4: mixed, all correct, all wrong
R = torch.tensor([1., 0., 0., 1., 1., 1., 1., 1., 0., 0., 0., 0.])
N_GEN = 4


def test_registries():
    assert set(ADVANTAGES) == {"grpo", "psr", "nsr", "w_reinforce"}
    assert set(LOSS_TYPES) == {"grpo", "bnpo", "dr_grpo", "dapo"}


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------
def test_psr_table():
    a, keep = psr_advantages(R, N_GEN)
    assert a.tolist() == [1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert keep.tolist() == [True, False, False, True] + [True] * 4 + [False] * 4
    assert keep.dtype == torch.bool


def test_nsr_table():
    a, keep = nsr_advantages(R, N_GEN)
    assert a.tolist() == [0, -1, -1, 0, 0, 0, 0, 0, -1, -1, -1, -1]
    assert keep.tolist() == [False, True, True, False] + [False] * 4 + [True] * 4


def test_w_reinforce_table():
    a, keep = w_reinforce_advantages(R, N_GEN, lam=0.1)
    expect = [0.1, -1, -1, 0.1, 0.1, 0.1, 0.1, 0.1, -1, -1, -1, -1]
    assert torch.allclose(a, torch.tensor(expect), atol=1e-7, rtol=0)
    assert keep.all()
    a_default, _ = w_reinforce_advantages(R, N_GEN)
    assert torch.equal(a_default, a)


@pytest.mark.parametrize("rewards", [R, torch.tensor([0.0, 0.25, 0.5, 1.0, 0.75, 0.1], dtype=torch.float64)])
def test_w_reinforce_lam1_is_psr_plus_nsr(rewards):
    n = 4 if len(rewards) == 12 else 2
    ap, kp = psr_advantages(rewards, n)
    an, kn = nsr_advantages(rewards, n)
    aw, _ = w_reinforce_advantages(rewards, n, lam=1.0)
    assert torch.allclose(aw, torch.where(kp, ap, 0.0) + torch.where(kn, an, 0.0), atol=1e-12)
    # dropped rows have advantage 0 in the first place
    assert (ap[~kp] == 0).all() and (an[~kn] == 0).all()


def test_fractional_rewards_inside_unit_interval():
    r = torch.tensor([0.5, 0.0, 1.0, 0.25])
    assert psr_advantages(r, 2)[0].tolist() == [0.5, 0.0, 1.0, 0.25]
    assert psr_advantages(r, 2)[1].tolist() == [True, False, True, True]
    assert nsr_advantages(r, 2)[0].tolist() == [-0.5, -1.0, 0.0, -0.75]
    assert nsr_advantages(r, 2)[1].tolist() == [True, True, False, True]
    assert torch.allclose(w_reinforce_advantages(r, 2, lam=0.1)[0], torch.tensor([-0.45, -1.0, 0.1, -0.725]))


@pytest.mark.parametrize("rule", ["psr", "nsr", "w_reinforce"])
@pytest.mark.parametrize("bad", [1.5, -0.5, float("nan")])
def test_rewards_outside_unit_interval_raise(rule, bad):
    with pytest.raises(ValueError, match=rule):
        ADVANTAGES[rule](torch.tensor([0.0, bad, 1.0, 0.0]), 2)


def test_groups_must_be_whole():
    for rule in ADVANTAGES:
        with pytest.raises(ValueError, match="groups"):
            ADVANTAGES[rule](torch.zeros(5), 2)
    with pytest.raises(ValueError, match="n >= 2"):
        grpo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(R, N_GEN, scale_rewards="token")


def test_grpo_hand_value():
    a, keep = grpo_advantages(R, N_GEN)
    s = math.sqrt(1 / 3) + 1e-4                                   # unbiased std of [1, 0, 0, 1]
    expect = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s] + [0.0] * 8
    assert torch.allclose(a, torch.tensor(expect), atol=1e-6, rtol=0)
    assert keep.all() and keep.dtype == torch.bool


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("n", [2, 3, 8])
def test_grpo_against_numpy(scale, n):
    rng = np.random.default_rng(n)
    r = rng.random(5 * n)
    r[:n] = 0.7                                                   # a zero-std group
    g = r.reshape(-1, n)
    ref = g - g.mean(1, keepdims=True)
    if scale == "group":
        ref = ref / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    elif scale == "batch":
        ref = ref / (r.std(ddof=1) + 1e-4)
    a, keep = grpo_advantages(torch.from_numpy(r), n, scale_rewards=scale)
    np.testing.assert_allclose(a.numpy(), ref.reshape(-1), atol=1e-12, rtol=1e-10)
    assert keep.all()
    assert a[:n].abs().max() < 1e-10                              # float mean of equal values


# ---------------------------------------------------------------------------------------------
# Dynamic sampling
# ---------------------------------------------------------------------------------------------
def test_group_has_variance_exact_equality():
    r32 = torch.tensor([0.3, 0.3, 0.3, 1.0, 1.0, 1.0 + 1e-6, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0 + 1e-12],
                       dtype=torch.float32)
    assert float(r32[5]) != 1.0 and float(r32[11]) == 1.0        # 1e-6 survives fp32, 1e-12 does not
    assert group_has_variance(r32, 3).tolist() == [False, True, True, False]
    r64 = torch.tensor([0.3, 0.3, 1.0, 1.0 + 1e-12, 0.5, 0.5 + 1e-15], dtype=torch.float64)
    assert group_has_variance(r64, 2).tolist() == [False, True, True]
    assert reward_zero_std_share(r32, 3) == 0.5
    assert reward_zero_std_share(R, N_GEN) == pytest.approx(2 / 3)
    assert group_has_variance(torch.zeros(0), 4).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Clipped surrogate
# ---------------------------------------------------------------------------------------------
RATIOS = [0.5, 0.9, 1.1, 1.25, 1.5]


def _surrogate(ratios, adv, eps_low, eps_high):
    logp = torch.tensor([math.log(x) for x in ratios], dtype=torch.float64).repeat(len(adv), 1)
    logp = (logp - 0.3).requires_grad_()                          # old_logp = -0.3 everywhere
    old = torch.full_like(logp, -0.3)
    a = torch.tensor(adv, dtype=torch.float64)[:, None]           # (N, 1) per sequence
    loss, clipped = clipped_surrogate(logp, old, a, eps_low, eps_high)
    loss.sum().backward()
    return loss.detach(), clipped, logp.grad


def test_clipped_surrogate_table_asymmetric():
    loss, clipped, grad = _surrogate(RATIOS, [1.0, -1.0, 2.0, 0.0], 0.2, 0.28)
    expect = [[-0.5, -0.9, -1.1, -1.25, -1.28],                   # A > 0: only the top clips
              [0.8, 0.9, 1.1, 1.25, 1.5],                         # A < 0: only the bottom clips
              [-1.0, -1.8, -2.2, -2.5, -2.56],
              [0.0] * 5]
    assert torch.allclose(loss, torch.tensor(expect, dtype=torch.float64), atol=1e-12)
    flags = [[False, False, False, False, True], [True, False, False, False, False],
             [False, False, False, False, True], [False] * 5]
    assert clipped.tolist() == flags
    # d/dlogp of -rho A is -rho A off the clip, exactly 0 on clipped tokens
    rho = torch.tensor(RATIOS, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64)[:, None]
    assert torch.allclose(grad, torch.where(clipped, 0.0, -rho * adv), atol=1e-12)
    assert (grad[clipped] == 0).all()


def test_clipped_surrogate_eps_high_defaults_to_low():
    loss, clipped, grad = _surrogate(RATIOS, [1.0, -1.0], 0.2, None)
    assert torch.allclose(loss[0], torch.tensor([-0.5, -0.9, -1.1, -1.2, -1.2], dtype=torch.float64))
    assert clipped.tolist() == [[False, False, False, True, True], [True, False, False, False, False]]
    assert (grad[0, 3:] == 0).all() and (grad[0, :3] != 0).all()


def test_clipped_surrogate_per_token_advantages_and_detach():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]], requires_grad=True)
    old = torch.zeros(2, 3, requires_grad=True)
    loss, clipped = clipped_surrogate(logp, old, adv)
    assert torch.equal(loss, -adv.detach()) and not clipped.any()
    loss.sum().backward()
    assert adv.grad is None and old.grad is None and torch.equal(logp.grad, -adv.detach())


# ---------------------------------------------------------------------------------------------
# Loss reductions
# ---------------------------------------------------------------------------------------------
L_TOK = torch.tensor([[1., 2., 3., 4.], [5., 6., 7., 8.], [9., 10., 11., 12.]])
MASK = torch.tensor([[1., 1., 0., 0.], [1., 1., 1., 1.], [1., 0., 0., 0.]])


def _norm(mask, nmb=1, lmax=4):
    return {"num_sequences": float((mask.sum(-1) > 0).sum()), "num_tokens": float(mask.sum()),
            "max_completion_length": lmax, "num_micro_batches": nmb}


def test_loss_types_hand_values():
    nm = _norm(MASK)                                              # 3 sequences, 7 tokens
    expect = {"grpo": (1.5 + 6.5 + 9) / 3, "bnpo": 38 / 7, "dr_grpo": 38 / 12, "dapo": 38 / 7}
    for name, value in expect.items():
        assert LOSS_TYPES[name](L_TOK, MASK, **nm).item() == pytest.approx(value, rel=1e-6), name


def test_loss_types_dropped_row():
    keep = torch.tensor([True, False, True])
    mask = MASK * keep[:, None]
    nm = {"num_sequences": 2.0, "num_tokens": 3.0, "max_completion_length": 4, "num_micro_batches": 1}
    expect = {"grpo": (1.5 + 9) / 2, "bnpo": 12 / 3, "dr_grpo": 12 / 8, "dapo": 12 / 3}
    for name, value in expect.items():
        assert LOSS_TYPES[name](L_TOK, mask, **nm).item() == pytest.approx(value, rel=1e-6), name


def test_loss_types_padding_never_leaks():
    per_token = L_TOK.clone().requires_grad_()
    for name, fn in LOSS_TYPES.items():
        dirty = torch.where(MASK > 0, per_token, torch.tensor(float("nan")))
        out = fn(dirty, MASK, **_norm(MASK))
        assert torch.isfinite(out), name
        g, = torch.autograd.grad(out, per_token)
        assert torch.isfinite(g).all() and (g[MASK == 0] == 0).all(), name


def test_loss_types_hand_split_bnpo_is_micro_batch_mean():
    nm = _norm(MASK, nmb=2)
    parts = [(L_TOK[:2], MASK[:2]), (L_TOK[2:], MASK[2:])]
    total = {k: sum(fn(l, m, **nm).item() for l, m in parts) for k, fn in LOSS_TYPES.items()}
    assert total["grpo"] == pytest.approx(17 / 3)
    assert total["dr_grpo"] == pytest.approx(38 / 12)
    assert total["dapo"] == pytest.approx(38 / 7)
    assert total["bnpo"] == pytest.approx((29 / 6 + 9 / 1) / 2)    # TRL: micro-batch token means
    assert total["bnpo"] != pytest.approx(38 / 7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_types_micro_batch_invariance(seed):
    g = torch.Generator().manual_seed(seed)
    N, T = 8, 6
    per_token = torch.randn(N, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (N,), generator=g)
    keep = torch.rand(N, generator=g) > 0.3
    mask = (torch.arange(T)[None] < lengths[:, None]).double() * keep[:, None]
    split = [range(0, 3), range(3, 8)]
    for name in ("grpo", "dr_grpo", "dapo"):
        fn = LOSS_TYPES[name]
        kept = float(keep.sum())                                  # kept rows count, even if empty
        base = {"num_sequences": kept, "num_tokens": float(mask.sum()), "max_completion_length": T}
        full = fn(per_token, mask, **base, num_micro_batches=1)
        parts = sum(fn(per_token[list(r)], mask[list(r)], **base, num_micro_batches=2) for r in split)
        assert torch.allclose(full, parts, atol=1e-12), name
    nm = _norm(mask, nmb=2, lmax=T)
    bnpo = sum(LOSS_TYPES["bnpo"](per_token[list(r)], mask[list(r)], **nm) for r in split)
    ref = sum((per_token[list(r)] * mask[list(r)]).sum() / mask[list(r)].sum().clamp(min=1) for r in split) / 2
    assert torch.allclose(bnpo, ref, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# KL and entropy
# ---------------------------------------------------------------------------------------------
def test_kl_k3_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 50, generator=g, dtype=torch.float64) * 3
    ref = torch.randn(4, 50, generator=g, dtype=torch.float64) * 3
    assert (kl_k3(logp, ref) >= 0).all()
    assert torch.equal(kl_k3(logp, logp), torch.zeros_like(logp))
    assert kl_k3(torch.tensor([0.0]), torch.tensor([math.log(2)])).item() == pytest.approx(2 - math.log(2) - 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_k3_estimates_kl_on_samples(seed):
    g = torch.Generator().manual_seed(seed)
    p_logits = torch.randn(7, generator=g, dtype=torch.float64)
    q_logits = torch.randn(7, generator=g, dtype=torch.float64)
    x = torch.multinomial(p_logits.softmax(-1), 200_000, replacement=True, generator=g)
    logp, ref = p_logits.log_softmax(-1)[x], q_logits.log_softmax(-1)[x]
    k3 = kl_k3(logp, ref)
    exact = kl_divergence(Categorical(logits=p_logits), Categorical(logits=q_logits)).item()
    assert abs(k3.mean().item() - exact) < 5 * k3.std().item() / math.sqrt(len(x)) + 1e-9
    assert abs(k3.mean().item() - exact) < 0.05 * exact


def test_entropy_from_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g) * 2
    logits[0, 0, :5] = float("-inf")
    h = entropy_from_logits(logits.bfloat16())
    assert h.dtype == torch.float32 and h.shape == (2, 3)
    ref = Categorical(logits=logits.bfloat16().float()).entropy()
    assert torch.allclose(h, ref, atol=1e-5)
    one_hot = torch.full((1, 1, 4), float("-inf"))
    one_hot[..., 2] = 0.0
    assert entropy_from_logits(one_hot).item() == 0.0


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------
def gae_reference(rewards, values, lengths, gamma, lam):
    """Slow per-row loop over each row's completion tokens; V beyond the last token is 0."""
    N, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(N)]
    for i in range(N):
        last = 0.0
        for t in reversed(range(lengths[i])):
            next_v = values[i][t + 1] if t + 1 < lengths[i] else 0.0
            delta = rewards[i][t] + gamma * next_v - values[i][t]
            last = delta + gamma * lam * last
            adv[i][t] = last
    ret = [[adv[i][t] + values[i][t] if t < lengths[i] else 0.0 for t in range(T)] for i in range(N)]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (1.0, 0.95), (0.9, 1.0)])
def test_gae_against_reference(gamma, lam):
    g = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    N, T = 6, 9
    lengths = [0, 1, 9, 4, 7, 3]
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()
    rewards = torch.randn(N, T, generator=g, dtype=torch.float64)
    values = torch.randn(N, T, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-12)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_terminal_reward_gamma_lam_one():
    mask = torch.tensor([[1., 1., 1., 0., 0.], [1., 1., 1., 1., 1.], [1., 0., 0., 0., 0.]])
    R_seq = torch.tensor([1.0, 0.0, 0.5])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0, 9.0], [0.1, -0.2, 0.3, 0.7, 0.5], [0.25, 3., 3., 3., 3.]])
    adv, ret = gae(terminal_rewards(R_seq, mask), values, mask, 1.0, 1.0)
    expect = torch.where(mask > 0, R_seq[:, None] - values, torch.zeros(()))
    assert torch.allclose(adv, expect, atol=1e-6)
    assert torch.allclose(ret, R_seq[:, None] * mask, atol=1e-6)


def test_terminal_rewards():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    out = terminal_rewards(torch.tensor([0.5, 1.0, 7.0, -2.0]), mask)
    assert out.tolist() == [[0, 0.5, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 0], [-2.0, 0, 0, 0]]


def test_value_loss_clipping():
    old = torch.tensor([[1.0, 1.0, 1.0, 0.0, 5.0]])
    ret = torch.tensor([[2.0, 2.0, 2.0, 1.0, 5.0]])
    v = torch.tensor([[1.5, 0.5, 1.1, 0.9, 100.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss = value_loss(v, old, ret, mask, clip_range=0.2)
    # v=1.5 -> clipped 1.2: max(.25, .64); v=0.5 -> clipped 0.8: max(2.25, 1.44); v=1.1 inside;
    # v=0.9 (old 0, R 1) -> clipped 0.2: max(.01, .64); masked: 0
    expect = torch.tensor([[0.32, 1.125, 0.405, 0.32, 0.0]])
    assert torch.allclose(loss, expect, atol=1e-6)
    loss.sum().backward()
    assert v.grad[0, 0] == 0 and v.grad[0, 3] == 0 and v.grad[0, 4] == 0   # clipped branch active
    assert v.grad[0, 1].item() == pytest.approx(0.5 - 2.0)
    assert v.grad[0, 2].item() == pytest.approx(1.1 - 2.0)


def test_whiten_against_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3 + 2
    mask = (torch.arange(6)[None] < torch.tensor([6, 2, 0, 5])[:, None])
    w = whiten(x, mask)
    sel = x[mask].numpy()
    ref = (sel - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(w[mask].numpy(), ref, atol=1e-12)
    assert (w[~mask] == 0).all()
    assert w[mask].mean().abs() < 1e-12


def test_batch_std_from_moments_across_processes():
    """scale_rewards=batch under several processes: each process's part divided by the std of
    the whole batch (as TRL's gathered rewards), from summed count / Σr / Σr²."""
    from paced.rl_losses import grpo_advantages, std_from_moments
    torch.manual_seed(0)
    rewards = torch.rand(24).round()                                   # 6 groups of 4
    whole, _ = grpo_advantages(rewards, 4, "batch")
    parts = rewards.double().split(12)                                 # two processes' halves
    m = [sum(float(p.numel()) for p in parts), sum(float(p.sum()) for p in parts),
         sum(float(p.pow(2).sum()) for p in parts)]
    assert abs(std_from_moments(*m) - float(rewards.double().std())) < 1e-12
    split = torch.cat([grpo_advantages(p.float(), 4, "batch", batch_std=std_from_moments(*m))[0] for p in parts])
    assert torch.allclose(split, whole)
    alone = torch.cat([grpo_advantages(p.float(), 4, "batch")[0] for p in parts])
    assert not torch.allclose(alone, whole)                            # each half's own std differs
    assert std_from_moments(1, 1.0, 1.0) == 0.0
