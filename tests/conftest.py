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
