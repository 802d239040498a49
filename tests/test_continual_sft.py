"""Continual fine-tuning, one task per ``sft.train`` run: ``optimizer_state`` carries the
per-parameter state (CLASSP's accumulators) into the next run, with the next run's own
hyper-parameters (benchmarks/continual_lm.py relies on it)."""
from pathlib import Path

import torch

from paced.checkpoint import latest_checkpoint
from paced.config import SFTConfig, load_config
from paced.train import sft

torch.set_num_threads(1)
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke"
CLASSP = ["optim.name=classp", "optim.lr_scheduler_type=constant", "optim.warmup_steps=0",
          "train.max_steps=3", "run.progress=false"]


def state_of(run_dir):
    return torch.load(latest_checkpoint(run_dir) / "trainer_state.pt", weights_only=True)["optimizer"]


def test_optimizer_state_carries_over_with_the_new_hyper_parameters(tmp_path):
    sft.train(load_config(SFTConfig, SMOKE / "sft.yaml", [*CLASSP, "optim.lr=0.05"], run_dir=tmp_path / "a"))
    first = state_of(tmp_path / "a")
    assert first["state"] and all(float(s["sum"].sum()) > 0 for s in first["state"].values())
    task2 = [*CLASSP, "optim.lr=0.01", f"model.path={tmp_path / 'a' / 'model'}", "model.preset=null",
             "data.train=[{source: sub, n: 32, difficulty: [1, 2]}]"]
    sft.train(load_config(SFTConfig, SMOKE / "sft.yaml", task2, run_dir=tmp_path / "carried"),
              optimizer_state=first)
    sft.train(load_config(SFTConfig, SMOKE / "sft.yaml", task2, run_dir=tmp_path / "fresh"))
    carried, fresh = state_of(tmp_path / "carried"), state_of(tmp_path / "fresh")
    assert carried["param_groups"][0]["lr"] == 0.01                         # the new run's lr
    for i, s in carried["state"].items():
        # S only grows, from the first run's S; a fresh optimizer's S starts at 0 (same data, fewer sums)
        assert torch.all(s["sum"] >= first["state"][i]["sum"]), i
        assert float(s["sum"].sum()) > float(fresh["state"][i]["sum"].sum()), i
    a = torch.load(latest_checkpoint(tmp_path / "carried") / "trainer_state.pt", weights_only=True)
    assert a["scheduler"]["base_lrs"] == [0.01]
