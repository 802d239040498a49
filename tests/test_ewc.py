"""EWC baseline (docs/methods.md §4; Avalanche EWCPlugin conventions): Fisher and penalty by hand
on y = a·x + b, separate vs online over two tasks, state_dict, memory."""
import io

import pytest
import torch
from torch import nn

from paced.optim import EWC, diagonal_fisher, ewc_penalty

torch.set_num_threads(1)


class Line(nn.Module):
    def __init__(self, a=1.0, b=0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))
        self.drop = nn.Dropout(0.5)                      # eval mode during the Fisher pass

    def forward(self, x):
        return self.a * x + self.b


def sq_loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def set_ab(model, a, b):
    with torch.no_grad():
        model.a.fill_(a)
        model.b.fill_(b)


# task 1 at (a, b) = (1, 0): batch 1 x = [1, 2], y = [0, 0]: r = [1, 2],
#   ∂L/∂a = mean(2 r x) = mean(2, 8) = 5,  ∂L/∂b = mean(2 r) = 3
#   batch 2 x = [1], y = [3]: r = −2, ∂L/∂a = ∂L/∂b = −4
#   F1 = ((25 + 16)/2, (9 + 16)/2) = (20.5, 12.5)
TASK1 = [(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])), (torch.tensor([1.0]), torch.tensor([3.0]))]
# task 2 at (a, b) = (2, −1): x = [1], y = [0]: r = 1, ∂L/∂a = ∂L/∂b = 2, F2 = (4, 4)
TASK2 = [(torch.tensor([1.0]), torch.tensor([0.0]))]


def test_fisher_and_penalty_by_hand():
    model = Line().train()
    f = diagonal_fisher(model, TASK1, sq_loss)
    assert set(f) == {"a", "b"}
    assert f["a"].item() == pytest.approx(20.5) and f["b"].item() == pytest.approx(12.5)
    assert model.training and model.drop.training            # modes restored
    assert model.a.grad is None                              # .grad untouched
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    set_ab(model, 2.0, -1.0)
    pen = ewc_penalty(model, [(f, anchor)], lam=0.5)
    assert pen.item() == pytest.approx(0.5 * (20.5 * 1 + 12.5 * 1))   # λ Σ F (θ − θ*)², no 1/2
    pen.backward()
    assert model.a.grad.item() == pytest.approx(0.5 * 2 * 20.5)
    assert model.b.grad.item() == pytest.approx(0.5 * 2 * 12.5 * -1)


def test_fisher_only_requires_grad_and_needs_batches():
    model = Line()
    model.b.requires_grad_(False)
    assert set(diagonal_fisher(model, TASK1, sq_loss)) == {"a"}
    with pytest.raises(ValueError):
        diagonal_fisher(model, [], sq_loss)


def _two_tasks(ewc):
    model = Line(1.0, 0.0)
    assert ewc.penalty(model).item() == 0.0                  # before any consolidation
    ewc.consolidate(model, TASK1, sq_loss)
    set_ab(model, 2.0, -1.0)
    ewc.consolidate(model, TASK2, sq_loss)
    set_ab(model, 3.0, 1.0)
    return model


def test_separate_mode_two_tasks():
    ewc = EWC(lam=2.0)
    model = _two_tasks(ewc)
    assert len(ewc.tasks) == 2
    # F1 (20.5, 12.5) at (1, 0), F2 (4, 4) at (2, −1); θ = (3, 1)
    expected = 2.0 * (20.5 * 4 + 12.5 * 1 + 4 * 1 + 4 * 4)
    assert ewc.penalty(model).item() == pytest.approx(expected)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert ewc.memory_bytes() == 2 * 2 * param_bytes          # (F, θ*) per task


def test_online_mode_two_tasks():
    ewc = EWC(lam=2.0, mode="online", decay=0.5)
    model = _two_tasks(ewc)
    assert len(ewc.tasks) == 1 and ewc.consolidations == 2
    fisher, anchor = ewc.tasks[0]
    assert fisher["a"].item() == pytest.approx(0.5 * 20.5 + 4)
    assert fisher["b"].item() == pytest.approx(0.5 * 12.5 + 4)
    assert anchor["a"].item() == 2.0 and anchor["b"].item() == -1.0   # the latest weights
    expected = 2.0 * ((0.5 * 20.5 + 4) * 1 + (0.5 * 12.5 + 4) * 4)
    assert ewc.penalty(model).item() == pytest.approx(expected)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert ewc.memory_bytes() == 2 * param_bytes


def test_zero_penalty_is_a_tensor_and_backprops():
    model = Line()
    pen = EWC(lam=1.0).penalty(model)
    assert isinstance(pen, torch.Tensor) and pen.dim() == 0 and pen.item() == 0.0
    (sq_loss(model, TASK2[0]) + pen).backward()
    assert model.a.grad is not None


def test_state_dict_round_trip():
    ewc = EWC(lam=2.0, mode="online", decay=0.5)
    model = _two_tasks(ewc)
    buf = io.BytesIO()
    torch.save(ewc.state_dict(), buf)
    buf.seek(0)
    other = EWC(lam=0.0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert (other.lam, other.mode, other.decay, other.consolidations) == (2.0, "online", 0.5, 2)
    assert other.penalty(model).item() == ewc.penalty(model).item()
    assert other.memory_bytes() == ewc.memory_bytes()


def test_new_parameters_do_not_count():
    ewc = EWC(lam=1.0)
    model = Line()
    ewc.consolidate(model, TASK1, sq_loss)
    model.c = nn.Parameter(torch.tensor(5.0))                # added after the task
    assert ewc.penalty(model).item() == 0.0


@pytest.mark.parametrize("kw", [dict(lam=-1.0), dict(lam=1.0, mode="ewc++"),
                                dict(lam=1.0, mode="online", decay=-0.1),
                                dict(lam=1.0, mode="separate", decay=0.5)])
def test_invalid_arguments_raise(kw):
    with pytest.raises(ValueError):
        EWC(**kw)
