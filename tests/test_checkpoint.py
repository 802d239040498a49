"""Checkpoints: atomic layout, exact state round trip, and no code execution on load."""
from pathlib import Path
import os
import pickle

import pytest
import torch

from paced.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from paced.models import char_tokenizer, tiny_model
from paced.train.batches import batch_indices
from paced.train.optimization import make_scheduler


def _setup():
    tok = char_tokenizer()
    model = tiny_model("nano", len(tok), seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = make_scheduler(opt, "cosine", 2, 10)
    return tok, model, opt, sched


def _train_step(model, opt, sched):
    ids = torch.randint(4, 90, (2, 8))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_round_trip_restores_everything(tmp_path):
    tok, model, opt, sched = _setup()
    for _ in range(3):
        _train_step(model, opt, sched)
    save_checkpoint(tmp_path, 3, model, tok, opt, sched, {"samples_seen": 6})
    expected_next = torch.rand(3)  # the RNG draw right after the save

    tok2, model2, opt2, sched2 = _setup()
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, sched2)
    assert state == {"step": 3, "samples_seen": 6}
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()
    _train_step(model, opt, sched)
    torch.manual_seed(0)
    _ = torch.rand(1)
    # continuing both copies gives identical weights
    torch.manual_seed(5)
    _train_step(model2, opt2, sched2)
    torch.manual_seed(5)
    tok3, model3, opt3, sched3 = _setup()
    load_checkpoint(latest_checkpoint(tmp_path), model3, opt3, sched3)
    torch.manual_seed(5)
    _train_step(model3, opt3, sched3)
    for a, b in zip(model2.parameters(), model3.parameters()):
        assert torch.equal(a, b)


def test_only_complete_checkpoints_are_seen_and_pruning(tmp_path):
    tok, model, opt, sched = _setup()
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model, tok, opt, sched, {}, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step-8").mkdir()  # a save killed half-way
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-4", "step-6"]
    assert latest_checkpoint(tmp_path).name == "step-6"


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/paced-pwned",))


def test_loading_never_unpickles_code(tmp_path):
    tok, model, opt, sched = _setup()
    path = save_checkpoint(tmp_path, 1, model, tok, opt, sched, {})
    with open(path / "trainer_state.pt", "wb") as f:
        pickle.dump({"optimizer": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path, model, opt, sched)
    assert not os.path.exists("/tmp/paced-pwned")


def test_batch_indices_is_a_pure_epoch_stream():
    a = batch_indices(10, seed=3, start=0, size=25)
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))
    assert batch_indices(10, seed=3, start=7, size=5) == a[7:12]
    assert batch_indices(10, seed=4, start=0, size=10) != a[:10]


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, monkeypatch):
    """run.threads 0 resolves by the machine's load (rundir.auto_threads); a resumed run must compute
    with the count the run started with, or its floating-point sums (and weights) change."""
    import torch

    from paced import rundir as R
    from paced.config import SFTConfig, load_config
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke" / "sft.yaml"
    before = torch.get_num_threads()
    try:
        cfg = load_config(SFTConfig, smoke, ["run.threads=0"], run_dir=tmp_path)
        monkeypatch.setattr(R, "auto_threads", lambda: 2)
        R.start_run(cfg)
        assert (tmp_path / "threads").read_text() == "2\n" and torch.get_num_threads() == 2
        monkeypatch.setattr(R, "auto_threads", lambda: 1)           # the machine got busy
        R.start_run(cfg, resume=True)
        assert torch.get_num_threads() == 2 and (tmp_path / "threads").read_text() == "2\n"
        R.start_run(load_config(SFTConfig, smoke, ["run.threads=1"], run_dir=tmp_path), resume=True)
        assert torch.get_num_threads() == 1                           # an explicit count wins
        R.start_run(cfg)                                              # a fresh run resolves anew
        assert torch.get_num_threads() == 1 and (tmp_path / "threads").read_text() == "1\n"
    finally:
        torch.set_num_threads(before)
