"""``<model>.gradient_checkpointing: true`` in sft, distill and rl: the training forward saves far
less for the backward, and every logged loss and gradient norm equals the run without it — in
rl also for a policy with dropout (GPT-2), which trains in train mode with dropout off."""
import json
from pathlib import Path

import pytest
import torch

from paced.config import DistillConfig, RLConfig, SFTConfig, load_config
from paced.train import distill as D
from paced.train import rl as RL
from paced.train import sft as S

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke"
LOOPS = {"sft": (SFTConfig, "sft.yaml", "model", S), "distill": (DistillConfig, "distill.yaml", "student", D),
         "rl": (RLConfig, "rl.yaml", "policy", RL)}


def _run(tmp_path, kind, on, *overrides):
    """Run one smoke loop; return its logged (loss, grad_norm) rows and the bytes autograd saved
    for backward outside any checkpointed region (checkpointing keeps only layer inputs)."""
    C, file, key, mod = LOOPS[kind]
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    run_dir = tmp_path / f"{kind}-{on}"
    cfg = load_config(C, SMOKE / file, [f"{key}.gradient_checkpointing={str(on).lower()}",
                                        "run.progress=false", *overrides], run_dir=run_dir)
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


def test_rl_policy_with_dropout(tmp_path):
    """GPT-2 has dropout 0.1 everywhere: checkpointing puts the policy in train mode, and the
    numbers still equal the eval-mode run's, so every dropout was switched off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from paced.models import char_tokenizer, save_pretrained

    tok = char_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert cfg.resid_pdrop == cfg.attn_pdrop == cfg.embd_pdrop == 0.1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_pretrained(GPT2LMHeadModel(cfg), tok, tmp_path / "gpt2")
    over = (f"policy.path={tmp_path / 'gpt2'}", "policy.preset=null", "rl.num_iterations=2")
    plain, bytes_plain = _run(tmp_path, "rl", False, *over)
    ckpt, bytes_ckpt = _run(tmp_path, "rl", True, *over)
    assert plain and ckpt == plain
    assert bytes_ckpt < 0.7 * bytes_plain, (bytes_ckpt, bytes_plain)
