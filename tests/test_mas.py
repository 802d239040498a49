"""MAS baseline (docs/methods.md §4; Avalanche MASPlugin conventions): importance and penalty by
hand on f(x) = a·x + b, the α rule over two tasks, frozen parameters, memory, bad arguments."""
import pytest
import torch
from torch import nn

from paced.optim import MAS, mas_importance, mas_penalty

torch.set_num_threads(1)


def scale(a=1.0, b=0.0) -> nn.ParameterDict:
    """The parameters a, b (scalars) of f(x) = a·x + b on (B, 2) inputs; ``outputs`` applies f."""
    return nn.ParameterDict({"a": nn.Parameter(torch.tensor(a)), "b": nn.Parameter(torch.tensor(b))})


def outputs(model, batch):
    return model["a"] * batch + model["b"]


# at (a, b) = (1, 0): ‖f(x)‖ = ‖x‖, ∂‖f‖/∂a = ‖x‖, ∂‖f‖/∂b = (x1 + x2) / ‖x‖
#   batch 1, x = (3, 4):             ∂a = 5,               ∂b = 7/5 = 1.4
#   batch 2, x = (0, −2) and (6, 8): ∂a = mean(2, 10) = 6, ∂b = mean(−1, 1.4) = 0.2
#   Ω = (|5| + |6|, |1.4| + |0.2|) / 2 = (5.5, 0.8)   (abs of each batch's mean gradient)
TASK = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, -2.0], [6.0, 8.0]])]


def test_importance_by_hand():
    omega = mas_importance(scale(), TASK, outputs)
    assert set(omega) == {"a", "b"}
    assert float(omega["a"]) == pytest.approx(5.5) and float(omega["b"]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no mini-batches"):
        mas_importance(scale(), [], outputs)


def test_penalty_and_the_alpha_rule():
    model = scale()
    mas = MAS(lam=4.0, alpha=0.25)
    assert mas.penalty(model).item() == 0.0                       # nothing consolidated yet
    mas.consolidate(model, TASK, outputs)                         # Ω = 0.25·0 + 0.75·(5.5, 0.8)
    assert float(mas.importance["a"]) == pytest.approx(4.125) and float(mas.importance["b"]) == pytest.approx(0.6)
    with torch.no_grad():
        model["a"].fill_(2.0)
        model["b"].fill_(1.0)
    # λ/2 Σ Ω (θ − θ*)² = 2 · (4.125 · 1² + 0.6 · 1²)
    assert mas.penalty(model).item() == pytest.approx(9.45)
    assert mas_penalty(model, mas.importance, mas.anchor, 4.0).item() == pytest.approx(9.45)
    mas.penalty(model).backward()                                 # ∂/∂a = λ Ω_a (a − a*) = 16.5
    assert float(model["a"].grad) == pytest.approx(16.5)
    new = mas_importance(model, TASK, outputs)
    mas.consolidate(model, TASK, outputs)
    assert float(mas.importance["a"]) == pytest.approx(0.25 * 4.125 + 0.75 * float(new["a"]))
    assert float(mas.anchor["a"]) == 2.0 and mas.penalty(model).item() == 0.0
    assert mas.memory_bytes() == 4 * 4                            # Ω and θ* of two fp32 scalars


def test_frozen_parameters_get_no_importance():
    model = scale()
    model["b"].requires_grad_(False)
    mas = MAS(lam=1.0, alpha=0.5)
    mas.consolidate(model, TASK, outputs)
    assert set(mas.importance) == set(mas.anchor) == {"a"}


@pytest.mark.parametrize("lam, alpha", [(-1.0, 0.5), (1.0, -0.1), (1.0, 1.5), (float("nan"), 0.5)])
def test_bad_arguments(lam, alpha):
    with pytest.raises(ValueError, match="MAS: invalid"):
        MAS(lam, alpha)
