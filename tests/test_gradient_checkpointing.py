"""``<model>.gradient_checkpointing: true`` in sft and distill: the training forward saves far
less for the backward, and every logged loss and gradient norm equals the run without it; paced
rl refuses it (its policy trains in eval mode, where Hugging Face's checkpointing is off)."""
import json
from pathlib import Path

import pytest
import torch

from paced.config import ConfigError, DistillConfig, RLConfig, SFTConfig, load_config
from paced.train import distill as D
from paced.train import sft as S

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke"
LOOPS = {"sft": (SFTConfig, "sft.yaml", "model", S), "distill": (DistillConfig, "distill.yaml", "student", D)}


def _run(tmp_path, kind, on):
    """Run one smoke loop; return its logged (loss, grad_norm) rows and the bytes autograd saved
    for backward outside any checkpointed region (checkpointing keeps only layer inputs)."""
    C, file, key, mod = LOOPS[kind]
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    run_dir = tmp_path / f"{kind}-{on}"
    cfg = load_config(C, SMOKE / file, [f"{key}.gradient_checkpointing={str(on).lower()}",
                                        "run.progress=false"], run_dir=run_dir)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mod.train(cfg)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in rows if "loss" in r], sum(saved)


@pytest.mark.parametrize("kind", list(LOOPS))
def test_same_numbers_less_saved(tmp_path, kind):
    plain, bytes_plain = _run(tmp_path, kind, False)
    ckpt, bytes_ckpt = _run(tmp_path, kind, True)
    assert plain and ckpt == plain
    assert bytes_ckpt < 0.7 * bytes_plain, (bytes_ckpt, bytes_plain)


def test_rl_refuses_it():
    with pytest.raises(ConfigError, match="policy.gradient_checkpointing"):
        load_config(RLConfig, SMOKE / "rl.yaml", ["policy.gradient_checkpointing=true"])
