"""Shared test helpers."""
import pytest
import torch


@pytest.fixture
def killed_at_update(monkeypatch):
    """``killed_at_update(train, n)``: run ``train()`` while AdamW.step raises KeyboardInterrupt
    during the n-th update (a kill mid-run), check that it died, then restore AdamW.step."""
    def run(train, n: int) -> None:
        real_step = torch.optim.AdamW.step
        calls = {"n": 0}

        def dying_step(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("killed")
            return real_step(self, *a, **k)

        monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            train()
        monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add sync cost (ms per op on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def half_learned_add(tmp_path_factory):
    """A nano model that half-learned 1-digit addition (150 SFT steps): pass rates strictly
    inside (0, 1) on about half of a small pool, so weightings and RL groups have signal."""
    from pathlib import Path

    from paced.config import SFTConfig, load_config
    from paced.train import sft
    run = tmp_path_factory.mktemp("half_learned_add")
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke"
    cfg = load_config(SFTConfig, smoke / "sft.yaml", [
        "data.train=[{source: add, n: 200, difficulty: 1}]", "train.max_steps=150",
        "train.per_device_train_batch_size=32", "run.save_steps=0", "optim.lr=1e-2",
        "run.progress=false"], run_dir=run)
    sft.train(cfg)
    return run / "model"
