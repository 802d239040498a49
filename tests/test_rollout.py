"""The shared sampler: shapes, masks, log-probs, EOS handling, seeding, filtering."""
import copy

import pytest
import torch

from paced.models import build_tiny, encode_prompts, load_model_and_tokenizer
from paced.rollout import SamplingParams, filter_logits, sample


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("m")
    build_tiny("nano", path, seed=3)
    return load_model_and_tokenizer(path)


def _run(model, tok, prompts, batch_size=256, **kw):
    params = SamplingParams(**{"n": 3, "max_tokens": 12, "seed": 5, **kw})
    return sample(model, encode_prompts(tok, prompts), params, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, batch_size=batch_size)


PROMPTS = ["12+34=", "9*9=", "1234567+7654321="]  # different lengths: left padding matters


def test_shapes_and_masks(model_tok):
    model, tok = model_tok
    ro = _run(model, tok, PROMPTS)
    N = len(PROMPTS) * 3
    assert ro.completion_ids.shape[0] == N and ro.completion_ids.shape[1] <= 12
    assert ro.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    m = ro.completion_mask
    # mask is a prefix of ones; padding is pad_token_id with zero log-prob
    assert torch.all(m[:, 1:] <= m[:, :-1])
    assert torch.all(ro.completion_ids[m == 0] == tok.pad_token_id)
    assert torch.all(ro.sample_logp[m == 0] == 0) and torch.all(ro.sample_logp[m == 1] <= 0)
    for i in range(N):  # finished <=> the last kept token is EOS; EOS appears nowhere else
        n = int(m[i].sum())
        row = ro.completion_ids[i, :n].tolist()
        assert ro.finished[i] == (row[-1] == tok.eos_token_id)
        assert tok.eos_token_id not in row[:-1]
        if not ro.finished[i]:
            assert n == 12


@pytest.mark.parametrize("batch_size", [256, 4, 2])
def test_logp_matches_an_unpadded_forward_pass(model_tok, batch_size):
    """Left padding, shared prefill, KV cache, batch compaction and chunking (a prompt's samples
    split across chunks when batch_size < n) give the log-probs of one clean forward pass."""
    model, tok = model_tok
    for T in (1.0, 0.7):
        ro = _run(model, tok, PROMPTS, batch_size=batch_size, temperature=T, n=5)
        assert ro.prompt_index.tolist() == [i for i in range(3) for _ in range(5)]
        for i in range(ro.completion_ids.shape[0]):
            p = ro.prompt_ids[int(ro.prompt_index[i])]
            n = int(ro.lengths[i])
            c = ro.completion_ids[i, :n].tolist()
            with torch.no_grad():
                logits = model(torch.tensor([p + c])).logits[0, len(p) - 1: len(p) + n - 1]
            ref = (logits / T).log_softmax(-1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            torch.testing.assert_close(ro.sample_logp[i, :n], ref, atol=2e-5, rtol=1e-4)


def test_seeded_and_chunking_invariant_in_shape(model_tok):
    model, tok = model_tok
    a, b = _run(model, tok, PROMPTS), _run(model, tok, PROMPTS)
    assert torch.equal(a.completion_ids, b.completion_ids)
    c = _run(model, tok, PROMPTS, seed=6)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_greedy_matches_hf_generate(model_tok):
    model, tok = model_tok
    ids = encode_prompts(tok, PROMPTS)
    ro = sample(model, ids, SamplingParams(n=1, temperature=0.0, max_tokens=10),
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for i, p in enumerate(ids):
        out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        n = int(ro.lengths[i])
        assert ro.completion_ids[i, :n].tolist() == out[:n]


def test_texts_strip_special_tokens(model_tok):
    model, tok = model_tok
    ro = _run(model, tok, PROMPTS)
    for t in ro.texts(tok):
        assert "<eos>" not in t and "<pad>" not in t


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(logits, top_k=2, top_p=1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, top_k=0, top_p=0.7)  # 0.5 < 0.7, 0.8 >= 0.7: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p1 = filter_logits(logits, top_k=0, top_p=0.4)  # the top token alone crosses 0.4
    assert torch.isfinite(p1[0, 0]) and torch.isinf(p1[0, 1:]).all()


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_rows_ending_at_different_steps(model_tok, pad_is_eos):
    """A head with a bias towards EOS makes rows end at many different steps, so the batch is
    compacted mid-decode; each row still stops at its first EOS (pad may even equal EOS),
    nothing after it leaks out, and the log-probs are a clean forward pass's."""
    model, tok = model_tok
    model = copy.deepcopy(model)
    W = model.get_output_embeddings().weight                                  # (V, H)
    head = torch.nn.Linear(W.shape[1], W.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 3.0                                     # P(EOS) ~ 1/6 a step
    model.lm_head = head
    eos = tok.eos_token_id
    pad = eos if pad_is_eos else tok.pad_token_id
    ro = sample(model, encode_prompts(tok, PROMPTS), SamplingParams(n=8, max_tokens=12, seed=2),
                eos_token_id=eos, pad_token_id=pad)
    lengths = ro.lengths.tolist()
    assert len(set(lengths)) >= 6 and 12 <= sum(ro.finished.tolist()) < len(lengths)  # spread out
    for i, n in enumerate(lengths):
        row = ro.completion_ids[i].tolist()
        assert ro.completion_mask[i, :n].all() and not ro.completion_mask[i, n:].any()
        assert eos not in row[:n - 1] and all(t == pad for t in row[n:])
        assert bool(ro.finished[i]) == (row[n - 1] == eos) and (ro.finished[i] or n == 12)
        assert (ro.sample_logp[i, n:] == 0).all()
        p = ro.prompt_ids[int(ro.prompt_index[i])]
        with torch.no_grad():
            logits = model(torch.tensor([p + row[:n]])).logits[0, len(p) - 1: len(p) + n - 1]
        ref = logits.log_softmax(-1).gather(-1, torch.tensor(row[:n])[:, None]).squeeze(-1)
        torch.testing.assert_close(ro.sample_logp[i, :n], ref, atol=2e-5, rtol=1e-4)

