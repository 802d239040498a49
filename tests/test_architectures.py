"""paced on real Hugging Face architectures (tiny random configs, built in code): the sampler,
the teacher's prompt cache and the logits head must agree with the model's own forward pass —
left padding, GQA and multi-query, learned / rotary / ALiBi / no positions, sliding windows, MoE,
non-Llama cache layouts, and the post-head logit steps of Gemma (soft-capping), Cohere
(logit_scale) and Granite (logits_scaling)."""
import pytest
import torch
import transformers as T

from paced.models import check_logits_head, logits_head, tiny_model
from paced.rollout import SamplingParams, sample
from paced.teacher import TeacherPromptCache, teacher_hidden
from paced.train.batches import pack
from paced.train.logprobs import completion_logprobs

pytestmark = pytest.mark.slow   # 22 architectures end to end: `make test-fast` skips them

ARCHS = {  # name -> (config class, model class, config fields); vocab 50 for all
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=2, n_positions=64)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=2, num_key_value_heads=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                             num_hidden_layers=2, num_attention_heads=2)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                num_attention_heads=2, word_embed_proj_dim=32)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=2,
                                                            num_key_value_heads=1, head_dim=16, sliding_window=4)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(hidden_size=32, intermediate_size=64,  # window 4:
                                                            num_hidden_layers=2, num_attention_heads=2,  # sampled
                                                            num_key_value_heads=2, sliding_window=4)),   # far past it
    "phi": ("PhiConfig", "PhiForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2)),                      # partial rotary
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=2, num_attention_heads=2,
                                                               num_key_value_heads=2)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                                     num_hidden_layers=2, num_attention_heads=2,
                                                                     num_key_value_heads=1)),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", dict(n_embd=32, n_layer=2, n_head=2,
                                                                      n_positions=64)),       # multi-query
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=32, n_layer=2, n_head=2)),  # ALiBi
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                            num_attention_heads=2, num_key_value_heads=1,
                                                            num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                                moe_intermediate_size=32, num_hidden_layers=2,
                                                                shared_expert_intermediate_size=32,
                                                                num_attention_heads=2, num_key_value_heads=1,
                                                                num_experts=4, num_experts_per_tok=2)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(hidden_size=32, intermediate_size=64, pad_token_id=0,
                                                            num_hidden_layers=2, num_attention_heads=2,
                                                            num_key_value_heads=1)),          # NoPE layers
    # post-head logit steps, made large enough to matter on a random model
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                                         final_logit_softcapping=0.5, attn_implementation="eager")),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=2, num_key_value_heads=1, logit_scale=4.0)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                            num_attention_heads=2, logits_scaling=0.25)),
}
PROMPTS = [[3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13]]                         # different lengths


def _model(name):
    cfg_name, model_name, kw = ARCHS[name]
    if not hasattr(T, cfg_name) or not hasattr(T, model_name):
        pytest.skip(f"this transformers has no {model_name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(T, model_name)(getattr(T, cfg_name)(vocab_size=50, **kw)).eval()


@pytest.mark.parametrize("name", list(ARCHS))
def test_sampler_and_teacher_prompt_cache(name):
    model = _model(name)
    ro = sample(model, PROMPTS, SamplingParams(n=2, max_tokens=10, seed=1), eos_token_id=1, pad_token_id=0)
    for i in range(ro.completion_ids.shape[0]):
        p, n = PROMPTS[int(ro.prompt_index[i])], int(ro.lengths[i])
        c = ro.completion_ids[i, :n].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1: len(p) + n - 1]
        ref = logits.float().log_softmax(-1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
        torch.testing.assert_close(ro.sample_logp[i, :n], ref, atol=2e-5, rtol=1e-4)
    # The on-policy teacher path: prompt KV cache + response-only forward = one full forward.
    resp = [ro.completion_ids[i, :int(ro.lengths[i])].tolist() or [1] for i in (0, 2)]
    batch = pack(PROMPTS, resp, 0)
    R = max(map(len, resp))
    want = teacher_hidden(model, *batch, R)                                   # (B, R, H)
    got = TeacherPromptCache(2 ** 20)(model, ["a", "b"], PROMPTS, resp, batch, R)
    for b, r in enumerate(resp):
        torch.testing.assert_close(got[b, :len(r)], want[b, :len(r)], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(ARCHS))
def test_logits_head_gives_the_models_logits(name):
    """The head paced applies to hidden states (distillation losses, RL log-probs) reproduces the
    model's logits, post-head steps included, and the RL log-probs equal the sampler's."""
    model = _model(name)
    check_logits_head(model, "policy")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(logits_head(model)(out.hidden_states[-1]), out.logits, atol=1e-5, rtol=1e-4)
    # the teacher's path: its backbone alone (no logits), then the head, left padding included
    t_ids, t_mask, t_pos, tP = pack(PROMPTS, [[20, 21, 22], [23, 24]], 0)
    with torch.no_grad():
        full = model(input_ids=t_ids, attention_mask=t_mask, position_ids=t_pos).logits[:, tP - 1:tP + 2]
        h_t = teacher_hidden(model, t_ids, t_mask, t_pos, tP, 3)               # (2, 3, H)
    torch.testing.assert_close(logits_head(model)(h_t)[0], full[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits_head(model)(h_t)[1, :2], full[1, :2], atol=1e-5, rtol=1e-4)
    ro = sample(model, PROMPTS, SamplingParams(n=2, max_tokens=6, seed=3), eos_token_id=1, pad_token_id=0)
    resp = [ro.completion_ids[i, :int(ro.lengths[i])].tolist() for i in range(4)]
    ids, mask, pos, P = pack([PROMPTS[int(i)] for i in ro.prompt_index], resp, 0)
    R = ids.shape[1] - P
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ids, mask, pos, P, R, 1.0)     # (4, R)
    torch.testing.assert_close(logp * mask[:, P:], ro.sample_logp[:, :R], atol=2e-5, rtol=1e-4)


def test_plain_head_is_the_module_itself():
    model = tiny_model("nano", 50)
    assert logits_head(model) is model.get_output_embeddings()


def test_unknown_post_head_step_is_refused():
    """An architecture that changes its logits after the head in a way paced does not know
    (here: a Llama whose forward triples them) is refused with a message naming the role."""
    from transformers import LlamaForCausalLM

    class Tripled(LlamaForCausalLM):
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            out.logits = out.logits * 3
            return out

    model = tiny_model("nano", 50)
    bad = Tripled(model.config)
    bad.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match=r"teacher: Tripled does not compute its logits"):
        check_logits_head(bad, "teacher")
    check_logits_head(model, "teacher")                                      # the plain one passes


def _saved(name, tmp_path):
    """A tiny ``name`` model with the char tokenizer, saved as a normal HF directory."""
    from paced.models import char_tokenizer, save_pretrained

    tok = char_tokenizer()
    cfg_name, model_name, kw = ARCHS[name]
    cfg = getattr(T, cfg_name)(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, **{k: v for k, v in kw.items() if k != "pad_token_id"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(T, model_name)(cfg)
    save_pretrained(model, tok, tmp_path / name)
    return tmp_path / name


def test_distill_and_rl_end_to_end_on_other_architectures(tmp_path):
    """`paced distill` (Qwen2 student, soft-capped Gemma 2 teacher: forward KL through the hidden-
    state cache, then reverse KL through the prompt cache) and `paced rl` (a Cohere policy, scaled
    logits) run end to end on non-Llama models."""
    import json

    from paced.config import DistillConfig, RLConfig, load_config
    from paced.train import distill as D
    from paced.train import rl as RL

    smoke = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "smoke"
    student, teacher, policy = _saved("qwen2", tmp_path), _saved("gemma2", tmp_path), _saved("cohere", tmp_path)
    cfg = load_config(DistillConfig, smoke / "distill.yaml", [
        f"student.path={student}", "student.preset=null", f"teacher.path={teacher}", "data.eval=[]",
        "data.forgetting=[]"], run_dir=tmp_path / "distill")
    D.train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    # w_reinforce on an untrained policy (every sample wrong, A = -1), lr 0, two passes: the ratio
    # to the sampler's log-probs must stay 1 (loss 1, no token clipped at epsilon 1e-3), which
    # holds only if RL's log-probs are the model's true ones (the bare head: half the tokens clip)
    cfg = load_config(RLConfig, smoke / "rl.yaml", [
        f"policy.path={policy}", "policy.preset=null", "data.eval=[]",
        "rl.max_steps=2", "rl.num_iterations=2", "rl.epsilon=1e-3", "optim.lr=0"], run_dir=tmp_path / "rl")
    RL.train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "clip_ratio" in r]
    assert len(trained) == 2 and all(r["clip_ratio"] == 0.0 and abs(r["loss"] - 1.0) < 1e-4 for r in trained)


def test_hybrid_state_space_model_is_refused_clearly():
    """A hybrid attention + Mamba model (Falcon-H1) keeps states the sampler cannot share, expand
    or compact: sampling it is refused with a message that says so (not an IndexError deep in
    transformers); its teacher forward falls back from the prompt cache to the full pass."""
    if not hasattr(T, "FalconH1ForCausalLM"):
        pytest.skip("this transformers has no FalconH1ForCausalLM")
    cfg = T.FalconH1Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, mamba_d_ssm=32,
                           mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=1,
                           mamba_chunk_size=4, lm_head_multiplier=3.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = T.FalconH1ForCausalLM(cfg).eval()
    check_logits_head(model, "teacher")                          # lm_head_multiplier is applied
    with pytest.raises(ValueError, match="sampler: FalconH1ForCausalLM keeps state-space"):
        sample(model, PROMPTS, SamplingParams(n=2, max_tokens=4), eos_token_id=1, pad_token_id=0)
    resp = [[20, 21], [22]]
    batch = pack(PROMPTS, resp, 0)
    got = TeacherPromptCache(2 ** 20)(model, ["a", "b"], PROMPTS, resp, batch, 2)
    torch.testing.assert_close(got, teacher_hidden(model, *batch, 2))
