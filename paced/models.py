"""Models and tokenizers: load any local Hugging Face causal LM, or build a tiny one in code.

Tiny models are Llama-style (``LlamaForCausalLM``) with a character-level tokenizer built from
the ``tokenizers`` library (a BPE model with no merges, so every printable ASCII character is
one token). Both are written with ``save_pretrained`` and loaded back through
``load_model_and_tokenizer`` — exactly the path a user's real model takes, and the path a
built-in real model takes after its one-time conversion (paced/hub.py). Nothing is downloaded:
``local_files_only=True`` everywhere.
"""
from __future__ import annotations

import os
import string
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    # Kept short on purpose: with one token per character every template character costs a
    # position. The assistant turn ends with eos so SFT teaches the model to stop.
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ bos_token }}{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = string.printable[:95] + "\n"  # digits, letters, punctuation, space, newline

# name -> (hidden, layers, heads, intermediate); parameter counts at vocab 100 in the comment.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "nano": (32, 1, 2, 64),        # 14k: unit tests
    "tiny": (64, 2, 4, 256),       # 0.14M: the demo's student
    "small": (128, 4, 4, 512),     # 1.1M: the demo's teacher
    "medium": (256, 6, 8, 1024),   # 6.3M
    "base15m": (384, 8, 6, 1024),  # 14M: the throughput benchmark's second size
}


def char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` with a chat template, built in code."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(preset: str, vocab_size: int, seed: int = 0, max_positions: int = 256):
    """A randomly initialised Llama-style causal LM of the given size preset."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    hidden, layers, heads, inter = PRESETS[preset]
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=inter,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def build_tiny(preset: str, out_dir: str | os.PathLike, seed: int = 0):
    """Create a tiny model + char tokenizer and save both to ``out_dir`` (a normal HF dir)."""
    tok = char_tokenizer()
    model = tiny_model(preset, vocab_size=len(tok), seed=seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    save_pretrained(model, tok, out_dir)
    return model, tok


def quiet_hf() -> None:
    """No per-shard progress bars from transformers: our own bars and log lines are enough."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def save_pretrained(model, tokenizer, out_dir: str | os.PathLike, state_dict=None) -> None:
    quiet_hf()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model_and_tokenizer(path: str | os.PathLike, dtype: str = "float32"):
    """Load a local causal LM directory (or a built-in name, paced/hub.py) and its tokenizer.

    Left padding. The pad token: the tokenizer's own; where it has none, its unk token when that
    is not a stop token, else the eos token (as TRL). paced masks padding explicitly everywhere
    (attention masks, label masks, completion masks), so pad == eos is safe in every trainer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import resolve

    quiet_hf()
    path = Path(resolve(str(path)))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.path {str(path)!r} is not a model directory (no config.json)")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    torch_dtype = DTYPES[dtype] if dtype != "auto" else "auto"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    if tok.pad_token is None:
        unk = tok.unk_token_id
        tok.pad_token = tok.unk_token if unk is not None and unk not in stop_token_ids(model, tok) \
            else tok.eos_token
    return model, tok


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the generation config's ``eos_token_id`` (an id or
    a list: chat models list the end of a turn, e.g. ``<|im_end|>``, and the end of text) and the
    tokenizer's eos, in that order, without repeats."""
    m = model.module if hasattr(model, "module") else model
    gen = getattr(getattr(m, "generation_config", None), "eos_token_id", None)
    ids = [gen] if isinstance(gen, int) else list(gen or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no stop token: neither generation_config.eos_token_id nor "
                         "the tokenizer's eos_token is set")
    return list(dict.fromkeys(int(i) for i in ids))


_PROBE = "\x00paced-system\x00"


def render_prompt(tokenizer, prompt: str, system_prompt: str = "default") -> str:
    """The text the policy is conditioned on: the chat template's user turn (and generation
    prompt) when the tokenizer has a template, else the prompt itself."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    return render_chat(tokenizer, [{"role": "user", "content": prompt}], system_prompt, True)


def render_chat(tokenizer, turns: list[dict], system_prompt: str = "default",
                add_generation_prompt: bool = False) -> str:
    """``turns`` (user / assistant messages) through the chat template, with the system turn
    ``system_prompt`` names: "default" passes no system message (the template's own default
    system turn, if it has one, stays: SmolLM2's adds "You are a helpful AI assistant named
    SmolLM..."); "none" renders no system turn at all (for a template that inserts a default one,
    the rendering of a probe system turn alone is cut off the front, a BOS in front of it kept);
    any other string is the system message."""
    apply = lambda msgs: tokenizer.apply_chat_template(  # noqa: E731
        msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    if system_prompt == "default":
        return apply(turns)
    if system_prompt != "none":
        return apply([{"role": "system", "content": system_prompt}] + turns)
    probe = [{"role": "system", "content": _PROBE}]
    try:
        head = tokenizer.apply_chat_template(probe, tokenize=False)
        full = apply(probe + turns)
    except Exception:               # a template without a system role never adds one by itself
        return apply(turns)
    if _PROBE not in head:          # the template drops system messages: nothing to remove
        return apply(turns)
    if not full.startswith(head):
        raise ValueError("model.system_prompt 'none': the chat template renders the system turn "
                         "differently before a user turn; give the system prompt as text instead")
    rest, bos = full[len(head):], getattr(tokenizer, "bos_token", None) or ""
    # a BOS in front of the system turn stays (Llama 3, Gemma); ChatML's "BOS" is the turn opener
    return bos + rest if bos and head.startswith(bos) and not rest.startswith(bos) else rest


def encode_prompts(tokenizer, prompts: list[str], system_prompt: str = "default", room: int | None = None,
                   long_prompts: str = "error", names: list[str] | None = None) -> list[list[int]]:
    """Token ids of each rendered prompt (no padding; the sampler pads), fitted to ``room``
    tokens (``prompt_room``) by ``fit_prompts`` when given."""
    texts = [render_prompt(tokenizer, p, system_prompt) for p in prompts]
    # The template already holds bos/special tokens; do not let the tokenizer add them twice.
    add_special = not getattr(tokenizer, "chat_template", None)
    ids = [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]
    return ids if room is None else fit_prompts(ids, room, long_prompts, names)


def context_length(*models) -> int | None:
    """The shortest ``max_position_embeddings`` of ``models`` (None when none states one)."""
    found = []
    for m in models:
        cfg = getattr(m, "config", None)
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        n = getattr(cfg, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            found.append(n)
    return min(found) if found else None


def prompt_room(max_new: int, *models) -> int | None:
    """Tokens a prompt may have so that it and ``max_new`` completion tokens fit every model's
    context; None when no model states a context. A ValueError when ``max_new`` alone fills it."""
    context = context_length(*models)
    if context is None:
        return None
    if max_new >= context:
        raise ValueError(f"max_completion_length {max_new} leaves no room for a prompt in the model's "
                         f"context of {context} tokens (max_position_embeddings); lower it")
    return context - max_new


def fit_prompts(prompt_ids: list[list[int]], room: int, long_prompts: str = "error",
                names: list[str] | None = None) -> list[list[int]]:
    """Prompts longer than ``room`` tokens: a ValueError naming the first (``"error"``), or
    their last ``room`` tokens (``"truncate"``: TRL's truncation_side "left", which can cut the
    chat template's opening turn)."""
    out = []
    for i, ids in enumerate(prompt_ids):
        if len(ids) > room:
            if long_prompts != "truncate":
                name = names[i] if names else f"#{i}"
                raise ValueError(f"problem {name!r}: its prompt is {len(ids)} tokens, and with the completion "
                                 f"budget only {room} fit the model's context; shorten it, lower "
                                 f"max_completion_length, or set model.long_prompts=truncate")
            ids = ids[-room:]
        out.append(ids)
    return out


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# From final hidden states to logits
# ---------------------------------------------------------------------------------------------
def _logit_ops(config) -> tuple[tuple[str, float], ...]:
    """What an architecture does to ``lm_head(h)`` before returning its logits, read from its
    config: ("mul" | "div", s) and then ("softcap", c) for c · tanh(x / c)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    ops = []
    scale = getattr(cfg, "logit_scale", None)                      # Cohere, Cohere2: x * s
    if isinstance(scale, (int, float)) and scale != 1:
        ops.append(("mul", float(scale)))
    scaling = getattr(cfg, "logits_scaling", None)                 # Granite family, MiniCPM3: x / s
    if isinstance(scaling, (int, float)) and scaling != 1:         # HyperCLOVAX: x * s (muP)
        ops.append(("mul" if "hyperclovax" in str(getattr(cfg, "model_type", "")) else "div", float(scaling)))
    mult = getattr(cfg, "lm_head_multiplier", None)                # Falcon-H1: x * m
    if isinstance(mult, (int, float)) and mult != 1:
        ops.append(("mul", float(mult)))
    cap = getattr(cfg, "final_logit_softcapping", None)            # Gemma 2/3/3n/4
    if cap:
        ops.append(("softcap", float(cap)))
    return tuple(ops)


class _TransformedHead:
    """lm_head followed by the architecture's logit ops; ``out_features`` as on nn.Linear."""

    def __init__(self, head, ops):
        self.head, self.ops = head, ops
        self.out_features = head.weight.shape[0]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        x = self.head(h)                                           # (..., V)
        for op, v in self.ops:
            x = x * v if op == "mul" else x / v if op == "div" else torch.tanh(x / v) * v
        return x


def logits_head(model):
    """The map from a model's final hidden states to exactly its logits, (B, T, H) -> (B, T, V).

    paced applies the head to hidden states itself (chunked distillation losses, RL log-probs),
    so it must also apply what some architectures do after their ``lm_head``: Gemma's final-logit
    soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``, Falcon-H1's
    ``lm_head_multiplier``. For a plain-head model (Llama, Qwen, Mistral, GPT-2, ...) this is the
    output-embedding module itself. ``check_logits_head`` verifies the result on a probe.
    """
    m = model.module if hasattr(model, "module") else model
    head, ops = m.get_output_embeddings(), _logit_ops(m.config)
    return _TransformedHead(head, ops) if ops else head


@torch.no_grad()
def check_logits_head(model, what: str) -> None:
    """Refuse a model whose logits are not ``logits_head(model)`` of its last hidden state (an
    architecture with a post-head step paced does not know), naming ``what`` (e.g. "student")."""
    m = model.module if hasattr(model, "module") else model
    weight = m.get_output_embeddings().weight                      # (V, H)
    ids = torch.arange(1, 9, device=weight.device)[None] % weight.shape[0]  # (1, 8)
    was_training = m.training
    m.eval()
    out = m(input_ids=ids, output_hidden_states=True)
    m.train(was_training)
    want = out.logits.float()                                      # (1, 8, V)
    got = logits_head(m)(out.hidden_states[-1]).float()            # (1, 8, V)
    rel = 1e-3 if weight.dtype == torch.float32 else 2e-2
    diff = float((want - got).abs().max())
    if diff > rel * (1.0 + float(want.abs().max())):
        raise ValueError(
            f"{what}: {type(m).__name__} does not compute its logits as its output embedding of its "
            f"last hidden state (max |difference| {diff:.3g} on a probe), and paced applies the head "
            f"itself (chunked distillation losses, RL log-probs). Known post-head steps: "
            f"final_logit_softcapping, logit_scale, logits_scaling, lm_head_multiplier; this "
            f"architecture does something else and is not supported")


def train_mode_without_dropout(model) -> None:
    """``model.train()`` with every dropout off, as TRL's ``disable_dropout``: Hugging Face's
    activation checkpointing runs in train mode only, while the policy otherwise trains in eval
    mode (its log-probs then match the sampler's). Sets ``nn.Dropout.p`` and every float module
    attribute whose name contains "dropout" (e.g. attention_dropout) to 0."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for k in [k for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)]:
            setattr(m, k, 0.0)
