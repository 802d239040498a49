"""Distillation losses against torch.distributions and slow per-position references."""
import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from paced.losses import (DISTILL_LOSSES, akl, akl_weights, chunked_token_loss, forward_kl,
                          generalized_jsd, masked_mean, reverse_kl)

SHAPES = [(1, 1, 2), (2, 3, 5), (3, 7, 33), (2, 4, 257)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, one thread


def rand_logits(shape, seed, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def torch_kl(p_logits, q_logits):
    return kl_divergence(Categorical(logits=p_logits), Categorical(logits=q_logits))


# ---------------------------------------------------------------------------------------------
# Slow references written from the definitions
# ---------------------------------------------------------------------------------------------
def ref_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ref_jsd(p_s, p_t, beta):
    m = [beta * t + (1 - beta) * s for s, t in zip(p_s, p_t)]
    return beta * ref_kl(p_t, m) + (1 - beta) * ref_kl(p_s, m)


def ref_akl(p_s, p_t, mu):
    """Wu et al. 2025: teacher-sorted head up to cumulative mass mu (top-1 always head)."""
    order = sorted(range(len(p_t)), key=lambda v: -p_t[v])
    g_head = g_tail = 0.0
    cum = 0.0
    for rank, v in enumerate(order):
        cum += p_t[v]
        gap = abs(p_t[v] - p_s[v])
        if rank == 0 or cum <= mu:
            g_head += gap
        else:
            g_tail += gap
    w_head = g_head / (g_head + g_tail)
    return w_head * ref_kl(p_t, p_s) + (1 - w_head) * ref_kl(p_s, p_t)


def per_position(fn, s_logits, t_logits, temperature=1.0):
    p_s = torch.softmax(s_logits / temperature, -1)
    p_t = torch.softmax(t_logits / temperature, -1)
    out = torch.empty(s_logits.shape[:2], dtype=torch.float64)
    for b in range(out.shape[0]):
        for t in range(out.shape[1]):
            out[b, t] = fn(p_s[b, t].tolist(), p_t[b, t].tolist())
    return out


# ---------------------------------------------------------------------------------------------
# Forward / reverse KL
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_kl_matches_torch_distributions(shape, temperature):
    s, t = rand_logits(shape, 0), rand_logits(shape, 1)
    fkl = forward_kl(s, t, temperature)
    rkl = reverse_kl(s, t, temperature)
    assert fkl.shape == shape[:2] and rkl.shape == shape[:2]
    torch.testing.assert_close(fkl, torch_kl(t / temperature, s / temperature), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rkl, torch_kl(s / temperature, t / temperature), rtol=1e-9, atol=1e-12)
    assert (fkl >= 0).all() and (rkl >= 0).all()


def test_kl_zero_for_identical_and_float32_inputs():
    s = rand_logits((2, 5, 50), 3, dtype=torch.float32)
    for fn in (forward_kl, reverse_kl):
        assert fn(s, s.clone()).abs().max() < 1e-6
    assert forward_kl(s, s).dtype == torch.float32
    assert forward_kl(s.bfloat16(), s.bfloat16()).dtype == torch.float32   # upcast


# ---------------------------------------------------------------------------------------------
# Generalised JSD (TRL GKD convention)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_jsd_endpoints_are_forward_and_reverse_kl(shape):
    s, t = rand_logits(shape, 4), rand_logits(shape, 5)
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.0), forward_kl(s, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t), atol=1e-6, rtol=0)


def test_jsd_small_beta_behaves_like_scaled_kl():
    # GKD paper: JSD_beta / beta -> KL(p_T || p_S) as beta -> 0, JSD_beta / (1-beta) -> KL(p_S || p_T) as beta -> 1
    s, t = rand_logits((2, 3, 11), 6, scale=1.0), rand_logits((2, 3, 11), 7, scale=1.0)
    eps = 1e-5
    torch.testing.assert_close(generalized_jsd(s, t, beta=eps) / eps, forward_kl(s, t), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(generalized_jsd(s, t, beta=1 - eps) / eps, reverse_kl(s, t),
                               rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_slow_reference(beta, temperature):
    s, t = rand_logits((2, 3, 9), 8), rand_logits((2, 3, 9), 9)
    want = per_position(lambda ps, pt: ref_jsd(ps, pt, beta), s, t, temperature)
    torch.testing.assert_close(generalized_jsd(s, t, beta, temperature), want, rtol=1e-9, atol=1e-12)


def test_jsd_midpoint_symmetric_and_bounded():
    s, t = rand_logits((3, 4, 20), 10), rand_logits((3, 4, 20), 11)
    mid = generalized_jsd(s, t, 0.5)
    torch.testing.assert_close(mid, generalized_jsd(t, s, 0.5))      # swap student/teacher
    torch.testing.assert_close(generalized_jsd(s, t, 0.3), generalized_jsd(t, s, 0.7))
    assert (mid >= 0).all() and (mid <= math.log(2) + 1e-12).all()
    assert generalized_jsd(s, s, 0.5).abs().max() < 1e-12
    with pytest.raises(ValueError):
        generalized_jsd(s, t, beta=1.5)


# ---------------------------------------------------------------------------------------------
# AKL
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mu", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 5, 40)])
def test_akl_matches_slow_reference(mu, shape):
    s, t = rand_logits(shape, 12, scale=2.0), rand_logits(shape, 13, scale=2.0)
    want = per_position(lambda ps, pt: ref_akl(ps, pt, mu), s, t)
    torch.testing.assert_close(akl(s, t, mu), want, rtol=1e-9, atol=1e-12)


def test_akl_temperature_matches_reference():
    s, t = rand_logits((2, 3, 10), 14), rand_logits((2, 3, 10), 15)
    want = per_position(lambda ps, pt: ref_akl(ps, pt, 0.5), s, t, temperature=2.0)
    torch.testing.assert_close(akl(s, t, 0.5, temperature=2.0), want, rtol=1e-9, atol=1e-12)


def test_akl_limits():
    t = torch.log(torch.tensor([[[0.6, 0.3, 0.1]]], dtype=torch.float64))
    # mu = 0.95: head = the top two teacher tokens (cumulative 0.6, 0.9); the student only moves
    # mass between them, so the tail gap is 0 -> pure forward KL
    s = torch.log(torch.tensor([[[0.5, 0.4, 0.1]]], dtype=torch.float64))
    w_head, w_tail = akl_weights(s, t, mu=0.95)
    assert w_head.item() == pytest.approx(1.0) and w_tail.item() == pytest.approx(0.0)
    torch.testing.assert_close(akl(s, t, mu=0.95), forward_kl(s, t))
    # head = top-1 only and the top-1 gap is 0: all of the gap is in the tail -> reverse KL
    s2 = torch.log(torch.tensor([[[0.6, 0.1, 0.3]]], dtype=torch.float64))
    torch.testing.assert_close(akl(s2, t, mu=0.1), reverse_kl(s2, t))
    # identical distributions: zero loss, weights 1/2 (not NaN)
    w_head, w_tail = akl_weights(t, t)
    assert w_head.item() == 0.5 and w_tail.item() == 0.5 and akl(t, t).item() == 0.0


def test_akl_weights_are_detached():
    s = rand_logits((2, 3, 8), 16).requires_grad_()
    t = rand_logits((2, 3, 8), 17)
    w_head, _ = akl_weights(s, t)
    assert not w_head.requires_grad
    akl(s, t).sum().backward()
    w_head, w_tail = akl_weights(s.detach(), t)
    s2 = s.detach().clone().requires_grad_()
    (w_head * forward_kl(s2, t) + w_tail * reverse_kl(s2, t)).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad)


# ---------------------------------------------------------------------------------------------
# -inf logits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DISTILL_LOSSES))
def test_shared_neg_inf_entries_give_finite_values_and_gradients(name):
    fn = DISTILL_LOSSES[name]
    s, t = rand_logits((2, 4, 12), 18), rand_logits((2, 4, 12), 19)
    masked = torch.zeros(12, dtype=torch.bool)
    masked[[0, 5, 11]] = True
    s_inf = s.masked_fill(masked, float("-inf")).requires_grad_()
    t_inf = t.masked_fill(masked, float("-inf"))
    out = fn(s_inf, t_inf)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(s_inf.grad).all() and (s_inf.grad[..., masked] == 0).all()
    # same value as dropping the masked entries altogether
    torch.testing.assert_close(out.detach(), fn(s[..., ~masked], t[..., ~masked]), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(fn(s_inf.detach(), t_inf, temperature=2.0)).all()
    # a fully masked-out row of both models except one shared entry: zero loss, no NaN
    one = torch.full((1, 1, 5), float("-inf"), dtype=torch.float64)
    one[..., 2] = 0.0
    assert fn(one, one).item() == 0.0


def test_jsd_finite_when_only_one_side_masks():
    s, t = rand_logits((1, 2, 6), 20), rand_logits((1, 2, 6), 21)
    t[..., 2] = float("-inf")
    assert torch.isinf(forward_kl(t, s)).all()                  # KL(p_S || p_T) with p_T = 0 where p_S > 0
    for beta in (0.25, 0.5, 0.75):
        s_ = s.clone().requires_grad_()
        out = generalized_jsd(s_, t, beta)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(s_.grad).all()


# ---------------------------------------------------------------------------------------------
# masked_mean
# ---------------------------------------------------------------------------------------------
def test_masked_mean_hand_made():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                              [5.0, float("inf"), 7.0, float("nan")],
                              [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    out = masked_mean(per_token, mask)
    torch.testing.assert_close(out, torch.tensor([7.0 / 3.0, 6.0, 0.0]))
    torch.testing.assert_close(masked_mean(per_token, mask.bool()), out)
    x = per_token.clone().requires_grad_()
    masked_mean(x, mask).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad[0], torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]))
    assert (x.grad[2] == 0).all()


# ---------------------------------------------------------------------------------------------
# chunked_token_loss
# ---------------------------------------------------------------------------------------------
def make_heads(hidden, vocab, seed=0):
    torch.manual_seed(seed)
    student = torch.nn.Linear(hidden, vocab, bias=False).double()
    teacher = torch.nn.Linear(hidden, vocab, bias=False).double()
    return student, teacher


@pytest.mark.parametrize("ckpt_bytes", [0, 2 ** 40])  # always / never checkpointed
@pytest.mark.parametrize("chunk", [1, 3, 7, 10])
@pytest.mark.parametrize("name,kw", [("forward_kl", {}), ("reverse_kl", {"temperature": 1.5}),
                                     ("jsd", {"beta": 0.3}), ("akl", {"mu": 0.5})])
def test_chunked_equals_unchunked(chunk, name, kw, ckpt_bytes):
    B, T, H, V = 2, 7, 6, 19
    fn = DISTILL_LOSSES[name]
    s_head, t_head = make_heads(H, V)
    h_s = torch.randn(B, T, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h_t = torch.randn(B, T, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h_s1, h_s2 = h_s.clone().requires_grad_(), h_s.clone().requires_grad_()
    h_t2 = h_t.clone().requires_grad_()                          # teacher must get no gradient

    want = fn(s_head(h_s1), t_head(h_t).detach(), **kw)
    want.sum().backward()
    w_grad = s_head.weight.grad.clone()
    s_head.weight.grad = None

    got, agree = chunked_token_loss(h_s2, h_t2, s_head, t_head, fn, chunk_size=chunk, with_agreement=True,
                                    checkpoint_above_bytes=ckpt_bytes, **kw)
    assert got.shape == (B, T)
    assert torch.equal(agree, s_head(h_s).argmax(-1) == t_head(h_t).argmax(-1))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (got.sum()).backward()
    torch.testing.assert_close(h_s2.grad, h_s1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s_head.weight.grad, w_grad, rtol=1e-10, atol=1e-12)
    assert h_t2.grad is None and t_head.weight.grad is None


def test_chunked_float32_head_and_no_grad_mode():
    B, T, H, V = 2, 9, 8, 31
    s_head, t_head = torch.nn.Linear(H, V), torch.nn.Linear(H, V)
    h_s, h_t = torch.randn(B, T, H), torch.randn(B, T, H)
    with torch.no_grad():
        want = forward_kl(s_head(h_s), t_head(h_t))
        got = chunked_token_loss(h_s, h_t, s_head, t_head, forward_kl, chunk_size=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_saves_no_full_logits_for_backward():
    """Outside the checkpointed chunks nothing of size B*T*V is kept for the backward."""
    B, T, H, V = 2, 64, 8, 500
    s_head, t_head = torch.nn.Linear(H, V), torch.nn.Linear(H, V)
    h_s, h_t = torch.randn(B, T, H, requires_grad=True), torch.randn(B, T, H)

    def saved_numel(fn):
        total = [0]

        def pack(x):
            total[0] += x.numel()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn()
        return total[0]

    plain = saved_numel(lambda: forward_kl(s_head(h_s), t_head(h_t).detach()))
    chunked = saved_numel(lambda: chunked_token_loss(h_s, h_t, s_head, t_head, forward_kl, chunk_size=8,
                                                     checkpoint_above_bytes=0))
    assert plain >= B * T * V
    assert chunked < B * 8 * V
    # below the threshold (default 32 MiB of logits) nothing is checkpointed: everything is saved
    small = saved_numel(lambda: chunked_token_loss(h_s, h_t, s_head, t_head, forward_kl, chunk_size=8))
    assert small >= B * T * V
