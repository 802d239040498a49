"""PACED distillation end to end on tiny models: every loss x weighting, zero-weight skipping,
the vocabulary check, schedules with re-estimation, and exact resume."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from paced.config import DistillConfig, load_config
from paced.ledger import Ledger
from paced.models import build_tiny, char_tokenizer, load_model_and_tokenizer
from paced.teacher import check_vocab
from paced.train import distill as D

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"


@pytest.fixture(scope="module")
def student(half_learned_add):
    """tests/conftest.py: p̂ strictly inside (0, 1) on about half of the pool, so every
    weighting has problems to train on."""
    return half_learned_add


def distill_cfg(run_dir, student, *overrides):
    return load_config(DistillConfig, SMOKE / "distill.yaml", [
        f"student.path={student}", "student.preset=null", "teacher.privileged=true",
        "data.train=[{source: add, n: 24, difficulty: 1}]", "passrate.num_generations=8",
        "run.progress=false", *overrides], run_dir=run_dir)


# every DISTILL_LOSSES entry and every weighting in one smoke run each (not the cross product)
@pytest.mark.parametrize("loss_type, weighting", [("forward_kl", "uniform"), ("reverse_kl", "hard_filter"),
                                                  ("jsd", "beta"), ("akl", "beta")])
def test_every_loss_and_weighting(tmp_path, student, loss_type, weighting):
    cfg = distill_cfg(tmp_path, student, "data.eval=[]", "data.forgetting=[]",
                      f"distill.stages=[{{name: s, loss_type: {loss_type}, max_steps: 2, "
                      f"weighting: {weighting}}}]")
    summary = D.train(cfg)
    assert summary["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2   # zero-weight problems never reach a forward: the spy test below
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[0]["loss"] > 0  # privileged teacher: the KL is not trivially zero
    if weighting != "uniform":
        assert rows[0]["zero_weight_share"] > 0  # p̂ = 0 problems exist and got weight 0
    else:  # uniform uses no p̂: no rollouts are spent estimating it
        assert Ledger(tmp_path / "ledger.sqlite").summary() == []
    assert all(r["step_time"] > 0 and r["tokens_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("shrink_by", ["pool", "source_difficulty"])
def test_shrunk_weights_train_every_problem(tmp_path, student, shrink_by, monkeypatch):
    """weight_estimator shrunk (empirical-Bayes posterior mean of w) with adaptive estimation:
    unequal trials, no weight exactly 0; shrink_by source_difficulty hands the weights one group
    label per (source, difficulty) of the pool."""
    import paced.train.passrates as P
    seen, real = [], P.problem_weights
    monkeypatch.setattr(P, "problem_weights", lambda *a: seen.append(a[-1]) or real(*a))
    cfg = distill_cfg(tmp_path, student, "data.eval=[]", "data.forgetting=[]", "passrate.adaptive=true",
                      "data.train=[{source: add, n: 24, difficulty: [1, 2]}, {source: sub, n: 8, difficulty: 1}]",
                      "distill.stages=[{name: s, loss_type: forward_kl, max_steps: 2, weight_estimator: shrunk, "
                      f"shrink_by: {shrink_by}}}]")
    D.train(cfg)
    from paced.tasks import load_sources
    labels = set(seen[0].tolist())
    assert len(seen) == 1
    if shrink_by == "pool":
        assert labels == {0}
    else:
        assert len(labels) == len({(e.source, e.difficulty) for e in load_sources(cfg.data.train)}) > 1
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["zero_weight_share"] for r in rows] == [0.0, 0.0] and all(r["loss"] > 0 for r in rows)
    trials = {k for _, k in Ledger(tmp_path / "ledger.sqlite").counts(stage="0:s").values()}
    assert len(trials) > 1                                     # the sequential estimate stopped unevenly


def test_zero_weight_problems_are_never_forwarded(tmp_path, student, monkeypatch):
    forwarded = []
    real_pack = D.pack

    def spy(prompts, responses, pad):
        forwarded.extend(tuple(p) for p in prompts)
        return real_pack(prompts, responses, pad)

    monkeypatch.setattr(D, "pack", spy)
    cfg = distill_cfg(tmp_path, student, "teacher.privileged=false", "data.eval=[]", "data.forgetting=[]",
                      "distill.stages=[{name: s, loss_type: forward_kl, max_steps: 4, weighting: hard_filter}]")
    D.train(cfg)
    from paced.models import encode_prompts
    from paced.tasks import load_sources
    pool = load_sources(cfg.data.train)
    tok = char_tokenizer()
    counts = Ledger(tmp_path / "ledger.sqlite").counts(stage="0:s")
    prompt_of = {e.id: tuple(p) for e, p in zip(pool, encode_prompts(tok, [e.prompt for e in pool]))}
    alive = {prompt_of[i] for i, (c, k) in counts.items() if 0 < c < k}
    # 1-digit additions repeat in a pool of 24: judge only prompts whose problems all have w = 0
    dead = {prompt_of[i] for i, (c, k) in counts.items() if c in (0, k)} - alive
    assert dead and forwarded
    assert set(forwarded) <= alive and not set(forwarded) & dead


def test_vocabulary_mismatch_is_a_clear_error(tmp_path, student):
    other = tmp_path / "teacher"
    _, tok = build_tiny("nano", other)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    s_model, s_tok = load_model_and_tokenizer(student)
    t_model, t_tok = load_model_and_tokenizer(other)
    with pytest.raises(ValueError, match=r"vocabularies differ.*only in teacher: \['<extra>'\]"):
        check_vocab(s_tok, t_tok, s_model, t_model)
    cfg = distill_cfg(tmp_path / "run", student, f"teacher.path={other}")
    with pytest.raises(ValueError, match="vocabularies differ"):
        D.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_two_stage_schedule_reestimates(tmp_path, student):
    cfg = distill_cfg(tmp_path, student, "distill.stages=[{name: fkl, loss_type: forward_kl, max_steps: 3, "
                      "weighting: hard_filter}, {name: rkl, loss_type: reverse_kl, max_steps: 3, "
                      "weighting: beta, reestimate_every: 2}]")
    summary = D.train(cfg)
    steps = Ledger(tmp_path / "ledger.sqlite").summary()
    # p̂ estimates of both stages, and the reverse-KL stage's verified student responses
    assert {r["stage"] for r in steps} == {"0:fkl", "1:rkl", "1:rkl:online"}
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["fkl"] * 3 + ["rkl"] * 3
    assert [r["step"] for r in rows if "p_hat_histogram" in r] == [1, 4, 6]  # starts + every 2
    assert set(summary["before"]) == {"target", "forgetting"}
    assert "greedy" in summary["forgetting_drop"]


def test_resume_equals_uninterrupted(tmp_path, student, killed_at_update):
    full = distill_cfg(tmp_path / "full", student)
    D.train(full)

    crashed = distill_cfg(tmp_path / "crash", student)
    killed_at_update(lambda: D.train(crashed), 5)  # dies during the 5th update: after checkpoint step-4
    assert (tmp_path / "crash" / "checkpoints" / "step-4").exists()
    assert not (tmp_path / "crash" / "model").exists()
    D.train(crashed, resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def _tiny_teacher():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=16,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1)).eval()


@pytest.mark.parametrize("kind", ["hidden", "prompt"])
def test_teacher_caches_equal_the_full_forward(kind):
    """Served from the cache only when the whole batch is cached; the same hidden states as the
    teacher's padded full forward on every response position; the byte budget is respected."""
    from paced import teacher as T
    teacher = _tiny_teacher()
    calls = []
    teacher.get_decoder().register_forward_hook(lambda m, a, kw, out: calls.append(tuple(kw["input_ids"].shape)),
                                                with_kwargs=True)
    prompts, responses = [[1, 2, 3], [4]], [[5, 6, 7], [8]]
    batch = D.pack(prompts, responses, pad=0)
    R = batch[0].shape[1] - batch[3]
    resp_mask = batch[1][:, batch[3]:].bool()                               # (B, R)
    want = T.teacher_hidden(teacher, *batch, R)                              # (B, R, H)
    Cache = T.TeacherHiddenCache if kind == "hidden" else T.TeacherPromptCache
    big = Cache(max_bytes=2 ** 20)
    got = big(teacher, ["a", "b"], prompts, responses, batch, R)
    torch.testing.assert_close(got[resp_mask], want[resp_mask], rtol=1e-5, atol=1e-6)
    n = len(calls)
    got2 = big(teacher, ["a", "b"], prompts, responses, batch, R)
    assert torch.equal(got, got2)
    if kind == "hidden":
        assert len(calls) == n                                               # no teacher forward at all
    else:
        assert len(calls) == n + 1 and calls[-1] == (2, R - 1)      # the responses only
    tiny = Cache(max_bytes=1)                                                # nothing fits
    got3 = tiny(teacher, ["a", "b"], prompts, responses, batch, R)
    assert tiny.free == 0 and not tiny.entries
    torch.testing.assert_close(got3, want)                                   # the fallback: full forward


def test_prompt_cache_with_one_token_responses():
    from paced import teacher as T
    teacher = _tiny_teacher()
    prompts, responses = [[1, 2], [3, 4, 5]], [[6], [7]]
    batch = D.pack(prompts, responses, pad=0)
    want = T.teacher_hidden(teacher, *batch, 1)
    got = T.TeacherPromptCache(2 ** 20)(teacher, ["a", "b"], prompts, responses, batch, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl"])
def test_teacher_caches_train_like_no_cache_and_resume_exactly(tmp_path, student, monkeypatch, killed_at_update,
                                                              loss_type):
    """Forward KL (hidden-state cache) and reverse KL (prompt cache) train like the uncached
    loop, and a run killed mid-stage resumes (with empty caches) to the same weights."""
    stages = f"distill.stages=[{{name: s, loss_type: {loss_type}, max_steps: 6, weighting: uniform}}]"
    common = ["teacher.privileged=false", "data.eval=[]", "data.forgetting=[]", stages,
              "distill.per_device_train_batch_size=8", "run.save_steps=2", "run.save_total_limit=0"]
    calls = []
    real = D.teacher_hidden
    monkeypatch.setattr(D, "teacher_hidden", lambda *a, **k: calls.append(1) or real(*a, **k))
    D.train(distill_cfg(tmp_path / "cached", student, *common))
    assert calls == []                                           # every batch served by a cache
    D.train(distill_cfg(tmp_path / "plain", student, *common, "distill.teacher_cache_mib=0"))
    assert len(calls) == 6
    a = load_file(tmp_path / "cached" / "model" / "model.safetensors")
    b = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)

    crashed = distill_cfg(tmp_path / "crash", student, *common)
    killed_at_update(lambda: D.train(crashed), 5)  # after checkpoint step-4
    D.train(crashed, resume=True)
    c = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], c[k]), k


def test_online_passrate_reuses_the_stage_rollouts_and_resumes_exactly(tmp_path, student, killed_at_update):
    """online_passrate: the K-rollout estimate runs once (stage start); the student responses
    every step draws are verified into the ledger and feed later estimates; a killed run drops
    the online rows past its checkpoint and ends with the same weights and the same ledger."""
    stages = ("distill.stages=[{name: s, loss_type: reverse_kl, max_steps: 6, weighting: hard_filter, "
              "reestimate_every: 2, online_passrate: true}]")
    common = ["teacher.privileged=false", "data.eval=[]", "data.forgetting=[]", stages,
              "distill.per_device_train_batch_size=8", "run.save_steps=2", "run.save_total_limit=0"]
    D.train(distill_cfg(tmp_path / "full", student, *common))
    led = Ledger(tmp_path / "full" / "ledger.sqlite")
    assert {s["stage"] for s in led.summary()} == {"0:s", "0:s:online"}
    estimates = [r for r in led.summary() if r["stage"] == "0:s"]
    assert estimates[0]["max_step"] == 0                       # K rollouts only at the stage start
    online = [sum(k for _, k in led.counts(stage="0:s:online", step=s).values()) for s in range(1, 7)]
    assert online == [8] * 6                                    # one verified response per problem per step
    crashed = distill_cfg(tmp_path / "crash", student, *common)
    killed_at_update(lambda: D.train(crashed), 5)              # after checkpoint step-4
    D.train(crashed, resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert Ledger(tmp_path / "crash" / "ledger.sqlite").counts(stage="0:s:online") == \
        led.counts(stage="0:s:online")


def test_online_passrate_needs_student_responses(tmp_path, student):
    from paced.config import ConfigError
    with pytest.raises(ConfigError, match="online_passrate"):
        distill_cfg(tmp_path, student, "distill.stages=[{name: s, loss_type: forward_kl, online_passrate: true}]")


@pytest.mark.parametrize("by_weight", [False, True])
def test_pick_batch_draws_only_live_problems(by_weight):
    w = np.zeros(40)
    w[[3, 7, 8, 30]] = [0.2, 0.25, 0.1, 0.05]                 # 4 live problems among 40
    for step in range(20):
        picks = [D.pick_batch(w, 0, step, 3, 2, rank, by_weight) for rank in range(2)]
        for pick, raw in picks:
            assert set(pick.tolist()) <= {3, 7, 8, 30}
            assert (raw > 0).all() and (raw == (1.0 if by_weight else w[pick])).all()
        # the two processes' slices together: one global batch of min(3 x 2, 4 live) problems
        assert sum(len(p) for p, _ in picks) == 4
        assert len({i for p, _ in picks for i in p.tolist()}) == 4   # no repeats while enough are live
    one = np.zeros(5)
    one[2] = 1.0                                                # fewer live than processes: repeats
    assert [D.pick_batch(one, 0, 0, 4, 2, r, by_weight)[0].tolist() for r in range(2)] == [[2], [2]]


def test_group_labels_number_groups_in_order_of_first_appearance():
    from paced.tasks import Example
    from paced.train.passrates import group_labels
    ex = [Example(id=str(i), prompt="", answer="", source=s, difficulty=d)
          for i, (s, d) in enumerate([("add", 2), ("sub", 2), ("add", 2), ("add", None), ("sub", 1)])]
    assert group_labels(ex, "source_difficulty").tolist() == [0, 1, 0, 2, 3]
    assert group_labels(ex, "source").tolist() == [0, 1, 0, 0, 1]
    assert group_labels(ex, "difficulty").tolist() == [0, 0, 0, 1, 2]
    assert group_labels(ex, "pool").tolist() == [0] * 5


def test_shrink_by_needs_the_shrunk_estimator(tmp_path, student):
    from paced.config import ConfigError
    with pytest.raises(ConfigError, match=r"^distill.stages\[0\].shrink_by: 'difficulty' groups the prior of "
                                          r"weight_estimator 'shrunk'; set weight_estimator=shrunk or drop it$"):
        distill_cfg(tmp_path, student, "distill.stages=[{name: s, shrink_by: difficulty}]")


def test_shrunk_needs_the_beta_kernel(tmp_path, student):
    from paced.config import ConfigError
    with pytest.raises(ConfigError, match=r"^distill.stages\[0\].weight_estimator: 'shrunk' is a posterior mean of "
                                          r"p\^alpha \(1-p\)\^beta; it needs weighting 'beta'$"):
        distill_cfg(tmp_path, student, "distill.stages=[{name: s, weighting: hard_filter, weight_estimator: shrunk}]")
