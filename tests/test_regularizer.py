"""The trainers' ``regularizer: ewc`` (paced/train/regularizer.py): config validation, the Fisher
of the SFT loss at the starting weights, λ = 0 equals no regularizer, the logged penalty, the
pull towards the anchor, and exact resume (Fisher and anchor read back, or recomputed)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paced.config import ConfigError, DistillConfig, RegularizerCfg, SFTConfig, load_config
from paced.models import build_tiny, load_model_and_tokenizer
from paced.optim import diagonal_fisher
from paced.train import distill as D
from paced.train import regularizer as Rg
from paced.losses import sft_loss
from paced.train import batches, sft

torch.set_num_threads(1)
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke"
FISHER = "regularizer.fisher_data=[{source: sub, n: 16, difficulty: [1, 2], seed: 3}]"


def ewc_args(lam):
    return ["regularizer.name=ewc", f"regularizer.ewc_lambda={lam}", FISHER,
            "regularizer.fisher_batch_size=4"]


def distill_cfg(run_dir, *overrides):
    """The smoke schedule (fkl 3 steps, rkl 3 steps) on a preset nano student; the privileged
    self-teacher makes the KL non-zero from step 1."""
    return load_config(DistillConfig, SMOKE / "distill.yaml",
                       ["teacher.privileged=true", "run.progress=false", *overrides], run_dir=run_dir)


def sft_cfg(run_dir, *overrides):
    return load_config(SFTConfig, SMOKE / "sft.yaml", ["run.progress=false", *overrides], run_dir=run_dir)


def rows(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir, sub="model"):
    return load_file(Path(run_dir) / sub / "model.safetensors")


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("root,base", [(SFTConfig, ["model.preset=nano"]),
                                       (DistillConfig, ["student.preset=nano", "teacher.path=self"])])
def test_config_errors_name_the_key(root, base):
    with pytest.raises(ConfigError, match=r"regularizer.name: 'ewx' is not one of \['none', 'ewc'\]; "
                                          r"did you mean 'ewc'\?"):
        load_config(root, None, [*base, "regularizer.name=ewx"])
    with pytest.raises(ConfigError, match="regularizer.fisher_data: regularizer.name 'ewc' needs"):
        load_config(root, None, [*base, "regularizer.name=ewc"])
    with pytest.raises(ConfigError, match=r"regularizer.fisher_data\[0\].difficulty: lo 3 > hi 1"):
        load_config(root, None, [*base, "regularizer.name=ewc",
                                 "regularizer.fisher_data=[{source: add, n: 4, difficulty: [3, 1]}]"])
    with pytest.raises(ConfigError, match="regularizer.ewc_lambda: -1.0 is below the minimum"):
        load_config(root, None, [*base, "regularizer.ewc_lambda=-1"])
    cfg = load_config(root, None, [*base, *ewc_args(5)])
    assert cfg.regularizer.name == "ewc" and cfg.regularizer.fisher_data[0].source == "sub"
    assert load_config(root, None, base).regularizer.name == "none"       # off by default


# --------------------------------------------------------------------------------------------
# the Fisher
# --------------------------------------------------------------------------------------------
def test_fisher_is_the_sft_loss_fisher_at_the_starting_weights(tmp_path):
    model, tok = build_tiny("nano", tmp_path / "m")
    two = [{"source": "add", "n": 6, "difficulty": [1, 2]}, {"source": "sub", "n": 10, "difficulty": [1, 2]}]
    r = lambda mode, srcs: load_config(SFTConfig, None, [  # noqa: E731
        "model.preset=nano", "regularizer.name=ewc", f"regularizer.fisher_data={json.dumps(srcs)}",
        "regularizer.fisher_batch_size=4", f"regularizer.mode={mode}"]).regularizer
    pooled = Rg.compute_ewc(r("pooled", two), model, tok)
    fisher, anchor = pooled.tasks[0]
    # by hand: 16 examples, shuffled by FISHER_SEED, 4 batches of 4, mean of squared gradients
    from paced.tasks import load_sources
    data = [batches.tokenize_sft(tok, e.prompt, e.solution, 128)
            for e in load_sources(r("pooled", two).fisher_data)]
    mini = [batches.collate([data[j] for j in batches.batch_indices(16, Rg.FISHER_SEED, 4 * b, 4)], tok.pad_token_id)
            for b in range(4)]
    want = diagonal_fisher(model, mini,
                           lambda m, b: sft_loss(m(input_ids=b[0], attention_mask=b[1]).logits, b[2])[0])
    assert fisher.keys() == want.keys() and len(fisher) == len(list(model.parameters()))
    for n in want:
        torch.testing.assert_close(fisher[n], want[n], rtol=0, atol=0)
        assert torch.equal(anchor[n], dict(model.named_parameters())[n])
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    assert float(pooled.penalty(model).detach()) == 0.0                              # θ = θ*
    # separate: one Fisher per source, summed
    sep = Rg.compute_ewc(r("separate", two), model, tok).tasks[0][0]
    parts = [Rg.compute_ewc(r("pooled", [s]), model, tok).tasks[0][0] for s in two]
    for n in sep:
        torch.testing.assert_close(sep[n], parts[0][n] + parts[1][n])
    assert not torch.allclose(sep["model.embed_tokens.weight"], fisher["model.embed_tokens.weight"])


# --------------------------------------------------------------------------------------------
# in the trainers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def distill_runs(tmp_path_factory):
    """The same distillation with no regularizer, EWC with λ = 0, and EWC with a stiff λ."""
    root = tmp_path_factory.mktemp("reg")
    runs = {"none": [], "lam0": ewc_args(0), "stiff": ewc_args(1e4)}
    for name, args in runs.items():
        D.train(distill_cfg(root / name, *args))
    return root


def test_distill_lambda_zero_equals_no_regularizer(distill_runs):
    a, b = weights(distill_runs / "none"), weights(distill_runs / "lam0")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in rows(distill_runs / "none")] == [r["loss"] for r in rows(distill_runs / "lam0")]
    assert (distill_runs / "lam0" / "ewc.pt").exists() and not (distill_runs / "none" / "ewc.pt").exists()


def test_distill_logs_the_penalty_and_it_pulls_towards_the_start(distill_runs):
    assert all("ewc_penalty" not in r for r in rows(distill_runs / "none"))
    pen = [r["ewc_penalty"] for r in rows(distill_runs / "stiff")]
    assert len(pen) == 6 and pen[0] == 0.0                 # step 1: computed before any update, θ = θ*
    assert all(p > 0 for p in pen[1:])
    saved = torch.load(distill_runs / "stiff" / "ewc.pt", weights_only=True)
    start = weights(distill_runs / "none", "init")
    for k, anchor in saved["anchor"].items():
        assert torch.equal(anchor, start[k.replace("lm_head", "model.embed_tokens")] if k not in start
                           else start[k]), k                          # the anchor is the starting weights
    # Σ F (θ − θ*)², what EWC holds down (with Adam the plain distance moves ~lr per step either way)
    moved = {name: sum(float((saved["fisher"][k] * (weights(distill_runs / name)[k] - a).square()).sum())
                       for k, a in saved["anchor"].items()) for name in ("none", "stiff")}
    assert 0 < moved["stiff"] < 0.5 * moved["none"], moved


@pytest.mark.parametrize("keep_file", [True, False])
def test_distill_resume_with_ewc_equals_uninterrupted(tmp_path, monkeypatch, killed_at_update, distill_runs, keep_file):
    """Killed in the 5th update (after checkpoint step-4), resumed: the same weights as the
    uninterrupted stiff run, with the Fisher and anchor read back (or recomputed if deleted)."""
    crashed = distill_cfg(tmp_path / "crash", *ewc_args(1e4))
    killed_at_update(lambda: D.train(crashed), 5)
    assert (tmp_path / "crash" / "checkpoints" / "step-4").exists()
    if not keep_file:
        (tmp_path / "crash" / "ewc.pt").unlink()
    computed = []
    real_compute = Rg.compute_ewc
    monkeypatch.setattr(Rg, "compute_ewc", lambda *a: computed.append(1) or real_compute(*a))
    D.train(crashed, resume=True)
    assert computed == ([] if keep_file else [1])
    a, b = weights(distill_runs / "stiff"), weights(tmp_path / "crash")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full, resumed = rows(distill_runs / "stiff"), rows(tmp_path / "crash")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["ewc_penalty"] for r in resumed] == [r["ewc_penalty"] for r in full]


def test_resume_refuses_other_fisher_settings(tmp_path):
    cfg = sft_cfg(tmp_path, *ewc_args(10), "train.max_steps=2")
    sft.train(cfg)
    other = sft_cfg(tmp_path, *ewc_args(10), "regularizer.fisher_batch_size=8")
    with pytest.raises(ValueError, match=r"changes what the run computes: regularizer.fisher_batch_size \(4 -> 8\)"):
        sft.train(other, resume=True)
    sft.train(sft_cfg(tmp_path, *ewc_args(20), "train.max_steps=3"), resume=True)  # λ may change


def test_sft_lambda_zero_equals_none_and_resume_with_ewc(tmp_path, monkeypatch, killed_at_update):
    sft.train(sft_cfg(tmp_path / "none"))
    sft.train(sft_cfg(tmp_path / "lam0", *ewc_args(0)))
    a, b = weights(tmp_path / "none"), weights(tmp_path / "lam0")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sft.train(sft_cfg(tmp_path / "full", *ewc_args(100)))
    pen = [r["ewc_penalty"] for r in rows(tmp_path / "full")]
    assert pen[0] == 0.0 and all(p > 0 for p in pen[1:])
    full = weights(tmp_path / "full")
    assert not all(torch.equal(a[k], full[k]) for k in a)            # the penalty changed the run

    killed_at_update(lambda: sft.train(sft_cfg(tmp_path / "crash", *ewc_args(100))), 4)  # after step-3
    sft.train(sft_cfg(tmp_path / "crash", *ewc_args(100)), resume=True)
    b = weights(tmp_path / "crash")
    assert all(torch.equal(full[k], b[k]) for k in full)


def test_ewc_file_round_trip_is_exact(tmp_path):
    model, tok = build_tiny("nano", tmp_path / "m")
    r = load_config(SFTConfig, None, ["model.preset=nano", *ewc_args(3.0)]).regularizer
    assert isinstance(r, RegularizerCfg)
    ewc = Rg.compute_ewc(r, model, tok)
    Rg.save_ewc(ewc, r, tmp_path / "ewc.pt")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    back = Rg.load_ewc(r, model, tmp_path / "ewc.pt")
    assert back.lam == 3.0
    assert torch.equal(back.penalty(model), ewc.penalty(model)) and float(back.penalty(model).detach()) > 0
    m2, _ = load_model_and_tokenizer(tmp_path / "m")
    assert float(Rg.load_ewc(r, m2, tmp_path / "ewc.pt").penalty(m2).detach()) == 0.0   # anchor = start
