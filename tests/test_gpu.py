"""GPU paths (bf16 sampling and SFT on CUDA). Skipped cleanly where no CUDA device exists."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parents[1]


def test_bf16_sampling_on_cuda(tmp_path):
    from paced.models import build_tiny, encode_prompts, load_model_and_tokenizer
    from paced.rollout import SamplingParams, sample

    build_tiny("tiny", tmp_path)
    model, tok = load_model_and_tokenizer(tmp_path, dtype="bfloat16")
    model = model.cuda()
    ro = sample(model, encode_prompts(tok, ["12+34=", "5*6="]), SamplingParams(n=4, max_tokens=8),
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert ro.completion_ids.shape[0] == 8
    assert torch.isfinite(ro.sample_logp).all()


def test_sft_smoke_on_cuda(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "paced", "sft", "--config",
                           str(ROOT / "configs/smoke/sft.yaml"), "--run-dir", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r" / "model" / "model.safetensors").exists()
