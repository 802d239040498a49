"""CLASSP optimizer (docs/methods.md §4, arXiv 2405.09637): Adagrad equivalence at p = 2, the
per-element threshold, p = 1 by hand, parameter groups, state_dict round trip, statistics."""
import copy
import io

import pytest
import torch
from torch import nn

from paced.optim import CLASSP, classp_step

torch.set_num_threads(1)


def _set_grads(params, gen, zero_frac=0.2):
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        g[torch.rand(p.shape, generator=gen) < zero_frac] = 0.0     # some exact zeros
        p.grad = g


def test_p2_threshold0_is_adagrad():
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    b = [t.clone() for t in a]
    eps, lr = 1e-3, 0.1
    ours = CLASSP(a, lr=lr, p=2, threshold=0.0, eps=eps)
    ref = torch.optim.Adagrad(b, lr=lr, initial_accumulator_value=eps, eps=0)
    for _ in range(50):
        _set_grads(a, gen)
        for x, y in zip(a, b):
            y.grad = x.grad.clone()
        ours.step()
        ref.step()
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-6)
        # Adagrad's state_sum starts at eps; ours at 0
        assert torch.allclose(ours.state[x]["sum"] + eps, ref.state[y]["sum"], rtol=1e-6, atol=1e-6)


def test_threshold_is_per_element_and_freezes_the_accumulator():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    opt = CLASSP([w], lr=0.1, p=1, threshold=0.25, eps=0.0)
    w.grad = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])            # all above: every element moves
    opt.step()
    sum_before, w_before = opt.state[w]["sum"].clone(), w.detach().clone()
    assert torch.equal(sum_before, torch.ones(5))
    w.grad = torch.tensor([0.1, -2.0, 0.5, 0.0, -0.6])         # g² = .01, 4, .25 (= thr), 0, .36
    opt.step()
    frozen = torch.tensor([True, False, True, True, False])
    assert torch.equal(w[frozen], w_before[frozen])
    assert torch.equal(opt.state[w]["sum"][frozen], sum_before[frozen])
    s = opt.state[w]["sum"]
    assert s[1].item() == pytest.approx(3.0) and s[4].item() == pytest.approx(1.6)
    assert w[1].item() == pytest.approx(w_before[1].item() + 0.1 * 2.0 / 3.0)
    assert w[4].item() == pytest.approx(w_before[4].item() + 0.1 * 0.6 / 1.6)
    assert opt.update_stats() == {"updated": 2, "total": 5, "fraction": 0.4}


def test_p1_by_hand_over_three_steps():
    lr, eps, w0 = 0.5, 0.1, 1.0
    w = torch.tensor([w0], dtype=torch.float64)
    opt = CLASSP([w], lr=lr, p=1, eps=eps)
    expected, s, x = [], 0.0, w0
    for g in (2.0, -1.0, 0.5):
        s += abs(g)
        x -= lr * g / (eps + s)
        expected.append(x)
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert w.item() == pytest.approx(x, rel=1e-12)
        assert opt.state[w]["sum"].item() == pytest.approx(s, rel=1e-12)
    # S = 2, 3, 3.5: 1 − 0.5·2/2.1, + 0.5/3.1, − 0.25/3.6
    assert expected[-1] == pytest.approx(1 - 1 / 2.1 + 0.5 / 3.1 - 0.25 / 3.6)


def test_general_p_formula():
    w = torch.tensor([0.5, -1.0], dtype=torch.float64)
    g = torch.tensor([0.3, -2.0], dtype=torch.float64)
    s = torch.tensor([1.0, 0.0], dtype=torch.float64)
    w2, s2, mask = classp_step(w, g, s, lr=0.2, p=3.0, threshold=0.0, eps=0.01)
    s_ref = s + g.abs() ** 3
    assert torch.allclose(s2, s_ref)
    assert torch.allclose(w2, w - 0.2 * g / (0.01 + s_ref) ** (1 / 3))
    assert mask.all() and torch.equal(w, torch.tensor([0.5, -1.0], dtype=torch.float64))  # pure


def test_param_groups_are_independent():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 4, generator=gen), torch.randn(6, generator=gen)
    a1, b1 = a.clone(), b.clone()
    cfg_a = dict(lr=0.1, p=2.0, threshold=0.0)
    cfg_b = dict(lr=0.5, p=1.0, threshold=0.5)
    both = CLASSP([{"params": [a], **cfg_a}, {"params": [b], **cfg_b}], eps=1e-4)
    only_a, only_b = CLASSP([a1], eps=1e-4, **cfg_a), CLASSP([b1], eps=1e-4, **cfg_b)
    for _ in range(10):
        _set_grads([a, b], gen)
        a1.grad, b1.grad = a.grad.clone(), b.grad.clone()
        both.step(), only_a.step(), only_b.step()
        groups = both.group_update_stats()
        assert groups[0] == only_a.update_stats() and groups[1] == only_b.update_stats()
    assert torch.equal(a, a1) and torch.equal(b, b1)
    assert groups[1]["fraction"] < 1.0            # threshold 0.5 left some elements of b alone


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_state_dict_round_trip():
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)) for _ in range(10)]
    model = _mlp()
    opt = CLASSP(model.parameters(), lr=0.05, p=1, threshold=1e-4, eps=1e-5)
    _train(model, opt, batches[:5])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    model2 = copy.deepcopy(model)
    opt2 = CLASSP(model2.parameters(), lr=1.0)                  # hyper-parameters come from sd
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["threshold"] == 1e-4
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]["sum"], opt2.state[q]["sum"])
    _train(model, opt, batches[5:])
    _train(model2, opt2, batches[5:])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["sum"], opt2.state[q]["sum"])


def test_update_stats_and_memory():
    a, b, c = torch.zeros(2, 3), torch.zeros(4), torch.zeros(5)
    opt = CLASSP([{"params": [a, c]}, {"params": [b], "threshold": 1.0}])
    assert opt.update_stats() == {"updated": 0, "total": 0, "fraction": 0.0}
    a.grad = torch.tensor([[1.0, 0.0, -3.0], [0.0, 0.0, 2.0]])   # 3 of 6 non-zero
    b.grad = torch.tensor([0.5, -1.5, 1.0, 2.0])                 # g² > 1: 2 of 4
    # c.grad is None: skipped, not counted
    opt.step()
    assert opt.update_stats() == {"updated": 5, "total": 10, "fraction": 0.5}
    assert opt.last_update_fraction == 0.5
    assert opt.group_update_stats() == [{"updated": 3, "total": 6, "fraction": 0.5},
                                        {"updated": 2, "total": 4, "fraction": 0.5}]
    assert c not in opt.state and torch.equal(c, torch.zeros(5))
    assert opt.memory_bytes() == (6 + 4) * 4                      # one fp32 sum per stepped param


def test_weight_decay_and_maximize():
    w = torch.tensor([1.0, 1.0])
    opt = CLASSP([w], lr=0.1, p=1, eps=0.0, weight_decay=0.5)
    w.grad = torch.tensor([2.0, 0.0])
    opt.step()
    assert w.tolist() == pytest.approx([1.0 * (1 - 0.05) - 0.1, 1.0])   # decay only where updated
    v = torch.tensor([1.0])
    opt = CLASSP([v], lr=0.1, p=1, eps=0.0, maximize=True)
    v.grad = torch.tensor([2.0])
    opt.step()
    assert v.item() == pytest.approx(1.1)


@pytest.mark.parametrize("kw", [dict(lr=-0.1), dict(p=0.0), dict(p=-1.0), dict(p=float("inf")),
                                dict(threshold=-1e-3), dict(eps=-1e-8), dict(weight_decay=-0.1)])
def test_invalid_hyper_parameters_raise(kw):
    with pytest.raises(ValueError):
        CLASSP([torch.zeros(2, requires_grad=True)], **kw)
    opt = CLASSP([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError):                               # a group's own values too
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], **kw})


def test_sparse_gradients_raise():
    emb = nn.Embedding(5, 3, sparse=True)
    opt = CLASSP(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
