"""paced continual (docs/methods.md §4): Avalanche metrics on a hand-made accuracy matrix, the
Permuted- / Split-Digits builders, the methods' state memory, the config rules, and a CLI smoke run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from paced.config import ConfigError, ContinualCfg, ContinualConfig, load_config  # noqa: E402
from paced.train.continual import (METHODS, average_accuracy, backward_transfer, build_mlp,  # noqa: E402
                                   class_groups, forgetting, learning_accuracy, load_digits_arrays,
                                   make_tasks, method_hyper, optimizer_state_bytes, permutations,
                                   run_method, split_indices, task_forgetting, with_hyper)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

# R[i][j]: accuracy on task j after training on task i (3 tasks; j > i are not-yet-seen tasks)
R = [[0.9, 0.1, 0.2],
     [0.6, 0.8, 0.1],
     [0.5, 0.7, 1.0]]


# ---------------------------------------------------------------------------------------------
# Metrics, by hand
# ---------------------------------------------------------------------------------------------
def test_metrics_by_hand():
    # average accuracy: last row (0.5 + 0.7 + 1.0) / 3
    assert average_accuracy(R) == pytest.approx(2.2 / 3)
    # forgetting of task 0: 0.9 − 0.5 = 0.4; task 1: 0.8 − 0.7 = 0.1; the last task has none
    assert task_forgetting(R) == pytest.approx([0.4, 0.1])
    assert forgetting(R) == pytest.approx(0.25)
    assert backward_transfer(R) == pytest.approx(-0.25)
    # learning accuracy (plasticity): the diagonal (0.9 + 0.8 + 1.0) / 3
    assert learning_accuracy(R) == pytest.approx(0.9)


def test_metrics_use_the_diagonal_not_the_best_or_first_row():
    # task 0 peaks after task 1 (0.95 > 0.9): forgetting is measured from R[0][0], not the peak;
    # improvement on an old task is negative forgetting (positive BWT)
    R2 = [[0.9, 0.0], [0.95, 0.8]]
    assert forgetting(R2) == pytest.approx(-0.05) and backward_transfer(R2) == pytest.approx(0.05)
    assert average_accuracy(R2) == pytest.approx(0.875)


def test_metrics_one_task():
    assert forgetting([[0.7]]) is None and backward_transfer([[0.7]]) is None
    assert average_accuracy([[0.7]]) == pytest.approx(0.7)


# ---------------------------------------------------------------------------------------------
# Task builders
# ---------------------------------------------------------------------------------------------
def test_digits_and_split_indices():
    x, y = load_digits_arrays()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    train, val, test = split_indices(y, 0.3, 0.2, data_seed=0)
    assert len(set(train) | set(val) | set(test)) == 1797
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert set(y[test]) == set(y[val]) == set(range(10))                  # stratified
    assert len(test) == pytest.approx(0.3 * 1797, abs=10)
    again = split_indices(y, 0.3, 0.2, data_seed=0)
    assert all((a == b).all() for a, b in zip((train, val, test), again))
    assert not (split_indices(y, 0.3, 0.2, data_seed=1)[2] == test).all()


def test_permutations_fixed_per_seed():
    a, b, c = permutations(3, seed=5), permutations(3, seed=5), permutations(3, seed=6)
    assert all((p == q).all() for p, q in zip(a, b))
    assert all(sorted(p) == list(range(64)) for p in a)
    assert not (a[0] == a[1]).all() and not (a[0] == c[0]).all()
    cfg = ContinualCfg(num_tasks=3)
    t1, t2 = make_tasks(cfg, 5), make_tasks(cfg, 5)
    x, _ = load_digits_arrays()
    assert len(t1) == 3 and all(t.classes is None for t in t1)
    for t, u in zip(t1, t2):
        assert torch.equal(t.x_train, u.x_train) and torch.equal(t.x_eval, u.x_eval)
        n = len(t.x_train) + len(t.x_eval)
        assert n == 1797 and set(t.y_train.tolist()) == set(range(10))
    # task t's images are the digits with their pixels in the order perm_t
    train, val, _ = split_indices(load_digits_arrays()[1], cfg.test_fraction, cfg.val_fraction, cfg.data_seed)
    first = np.sort(np.concatenate([train, val]))[0]
    assert np.array_equal(t1[1].x_train[0].numpy(), x[first][a[1]])


def test_split_classes_disjoint():
    groups = class_groups(5, seed=3)
    assert sorted(c for g in groups for c in g) == list(range(10)) and all(len(g) == 2 for g in groups)
    assert groups == class_groups(5, seed=3) and groups != class_groups(5, seed=4)
    tasks = make_tasks(ContinualCfg(benchmark="split", num_tasks=5, scenario="task"), 3)
    _, y = load_digits_arrays()
    for t, g in zip(tasks, groups):
        assert t.classes == g
        assert set(t.y_train.tolist()) == {0, 1} == set(t.y_eval.tolist())  # columns of the task head
    class_il = make_tasks(ContinualCfg(benchmark="split", num_tasks=5, scenario="class"), 3)
    for t, g in zip(class_il, groups):
        assert t.classes is None and set(t.y_train.tolist()) == set(g) == set(t.y_eval.tolist())
    test = split_indices(y, 0.3, 0.2, data_seed=0)[2]
    assert sum(len(t.y_eval) for t in class_il) == len(test)           # every test image once
    assert sum(len(t.y_eval) for t in tasks) == len(test)
    with pytest.raises(ValueError, match="do not divide"):
        class_groups(3, seed=0)


def test_holdout_val_excludes_val_from_training():
    test_tasks = make_tasks(ContinualCfg(num_tasks=1, holdout="test"), 0)
    val_tasks = make_tasks(ContinualCfg(num_tasks=1, holdout="val"), 0)
    assert len(val_tasks[0].x_train) + len(val_tasks[0].x_eval) == len(test_tasks[0].x_train)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------
def test_state_memory_per_method():
    cfg = ContinualCfg(num_tasks=2, epochs=1, batch_size=256, hidden=8)
    tasks = make_tasks(cfg, 0)
    params = sum(p.numel() for p in build_mlp(8, 2, 0).parameters())
    mem = {m: run_method(m, tasks, cfg, 0)["optimizer_state_bytes"] for m in METHODS}
    assert mem["sgd"] == 0
    assert mem["adam"] == 2 * 4 * params + 4 * 6            # exp_avg, exp_avg_sq + a 0-dim step per tensor
    assert mem["classp_p1"] == mem["classp_p2"] == 4 * params
    assert cfg.ewc.optimizer == cfg.mas.optimizer == "adam"
    assert mem["ewc"] == mem["adam"] + 2 * 2 * 4 * params     # separate: (F, θ*) per task, 2 tasks
    assert mem["mas"] == mem["adam"] + 2 * 4 * params         # one (Ω, θ*)
    online = run_method("ewc", tasks, with_hyper(cfg, "ewc", {"ewc_mode": "online"}), 0)
    assert online["optimizer_state_bytes"] == mem["adam"] + 2 * 4 * params
    on_sgd = with_hyper(with_hyper(cfg, "ewc", {"ewc_optimizer": "sgd"}), "mas", {"mas_optimizer": "sgd"})
    assert run_method("ewc", tasks, on_sgd, 0)["optimizer_state_bytes"] == 2 * 2 * 4 * params
    assert run_method("mas", tasks, on_sgd, 0)["optimizer_state_bytes"] == 2 * 4 * params


def test_run_is_deterministic_and_ewc_penalty_matters():
    cfg = with_hyper(ContinualCfg(num_tasks=2, epochs=2, batch_size=32, hidden=32), "ewc",
                     {"ewc_lr": 1e-2, "ewc_lambda": 10.0})
    tasks = make_tasks(cfg, 0)
    a, b = run_method("ewc", tasks, cfg, 0), run_method("ewc", tasks, cfg, 0)
    assert a["R"][0][0] > 0.5                                 # task 0 is learned
    assert a["R"] == b["R"] and len(a["R"]) == 2 and len(a["R"][0]) == 2
    # the first task is trained identically (no penalty yet), the second differs with a huge λ
    adam = run_method("adam", tasks, with_hyper(cfg, "adam", {"adam_lr": cfg.ewc.lr}), 0)
    assert adam["R"][0] == a["R"][0] and adam["R"][1] != a["R"][1]
    stiff = run_method("ewc", tasks, with_hyper(cfg, "ewc", {"ewc_lambda": 1e5}), 0)
    assert stiff["R"][1][0] > a["R"][1][0]                    # task 0 held better under a stiff penalty
    assert stiff["task_forgetting"][0] < a["task_forgetting"][0]


def test_method_hyper_reads_its_own_fields():
    c = ContinualCfg()
    assert method_hyper("sgd", c) == {"sgd_lr": c.sgd.lr}
    assert set(method_hyper("classp_p1", c)) == {"classp_p1_lr", "classp_p1_threshold", "classp_p1_eps"}
    assert method_hyper("ewc", c) == {"ewc_lr": 1e-3, "ewc_optimizer": "adam", "ewc_lambda": 1000.0,
                                      "ewc_mode": "separate", "ewc_decay": 1.0}
    changed = with_hyper(c, "mas", {"mas_lambda": 3.0, "mas_lr": 0.5})
    assert (changed.mas.mas_lambda, changed.mas.lr, changed.mas.alpha, changed.ewc) == (3.0, 0.5, 0.5, c.ewc)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
    assert optimizer_state_bytes(opt) == 0


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    (["continual.methods=[sgd, clasp_p1]"], "continual.methods[1]: 'clasp_p1' is not one of"),
    (["continual.methods=[]"], "name at least one method"),
    (["continual.methods=[sgd, sgd]"], "listed twice"),
    (["continual.benchmark=split", "continual.num_tasks=3"], "2 or 5"),
    (["continual.benchmark=rotated"], "is not one of ['permuted', 'split']"),
    (["continual.ewc.decay=0.5"], "continual.ewc.decay: used only with mode 'online'"),
    (["continual.ewc_decay=0.5"], "continual.ewc.decay: used only with mode 'online'"),   # the 0.1 name
    (["continual.epochs=0"], "below the minimum 1"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(ContinualConfig, None, override)
    assert message in str(e.value)


# ---------------------------------------------------------------------------------------------
# CLI smoke run
# ---------------------------------------------------------------------------------------------
def test_cli_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "paced", "continual", "--config",
                           str(ROOT / "configs" / "smoke" / "continual.yaml"), "--run-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "continual.json").read_text())
    smoke = load_config(ContinualConfig, ROOT / "configs" / "smoke" / "continual.yaml").continual
    assert out["command"] == "continual" and out["seeds"] == smoke.seeds
    assert set(out["methods"]) == set(smoke.methods) == set(METHODS)
    T = smoke.num_tasks
    for m, res in out["methods"].items():
        assert len(res["runs"]) == len(smoke.seeds)
        for run in res["runs"]:
            assert len(run["R"]) == T and all(len(row) == T for row in run["R"])
            assert all(0.0 <= a <= 1.0 for row in run["R"] for a in row)
            assert run["average_accuracy"] == pytest.approx(average_accuracy(run["R"]))
            assert run["forgetting"] == pytest.approx(forgetting(run["R"]))
            assert run["bwt"] == pytest.approx(-run["forgetting"])
            assert run["wall_s"] > 0
        accs = [r["average_accuracy"] for r in res["runs"]]
        assert res["summary"]["average_accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert res["summary"]["average_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
        assert (res["runs"][0]["update_fraction"] is not None) == m.startswith("classp")
    assert out["methods"]["sgd"]["summary"]["optimizer_state_bytes"]["mean"] == 0
    assert out["methods"]["ewc"]["runs"][0]["optimizer_state_bytes"] > \
        out["methods"]["classp_p1"]["runs"][0]["optimizer_state_bytes"] > 0
    assert (tmp_path / "config.yaml").exists()
    assert "classp_p1" in proc.stderr and "avg accuracy" in proc.stderr   # the table
    # a learned first task: better than chance (0.1) right after training on it
    assert np.mean([r["R"][0][0] for r in out["methods"]["adam"]["runs"]]) > 0.3


def test_config_choices_are_the_methods():
    """continual.methods is checked at load against config.CONTINUAL_METHODS (the config does not
    import the runner): it must name exactly METHODS' builders, and a typo is refused at load."""
    from paced.config import CONTINUAL_METHODS
    from paced.config import ConfigError
    assert CONTINUAL_METHODS == tuple(METHODS)
    with pytest.raises(ConfigError, match=r"continual.methods\[1\]: 'ewk' is not one of .*did you mean 'ewc'"):
        load_config(ContinualConfig, None, ["continual.methods=[sgd, ewk]"])
