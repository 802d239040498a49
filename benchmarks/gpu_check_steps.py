"""The in-process measurements of benchmarks/gpu_check.py: the matmul peak, training-step
throughput and MFU with a phase breakdown, rollout throughput, and step memory.

The model is Qwen2-shaped and built from its config with random weights (``qwen2``): Qwen2.5-0.5B's
shape on a GPU (``QWEN05``), a tiny one on the CPU (``TINY``). The steps are paced's own:
``distill_step.sft`` and ``distill_step.ours`` (benchmarks/distill_step.py's contenders: a
student-only SFT step through ``paced.losses.sft_loss``, and ``paced.train.distill.train_on``)
and, for RL, ``paced.train.rl_batch.pack_batch`` + ``targets_for`` + ``paced.train.rl.optimise``
(the loop's update on one rollout batch). Batches are random token ids, every row of one length:
no padding, by construction.

FLOPs (``step_flops``): model FLOPs, the matmuls only (norms, RoPE, softmaxes, the optimizer
uncounted). Per token, 2 FLOPs per matmul parameter forward (``matmul_params``: q, k, v, o and
the MLP of every layer; the head's V·d only at positions the step applies it to), plus causal
attention's QK^T and AV, 2·L·h·hd·T² per sequence forward (each of the ~T²/2 query-key pairs costs
2·hd per head in each of the two matmuls; PaLM's 12·L·d·T per token counts the masked half too).
Training = 3 × forward (backward = 2 × forward); a frozen teacher's forward counts once; the
recomputation inside checkpointed loss chunks is not counted (hardware FLOPs exceed these).
MFU = FLOPs / step seconds / the peak ``peak_matmul`` measured on the machine (an n×n×n product
in the steps' dtype on random data, median of 10 after 3 warm-ups).

    python benchmarks/gpu_check_steps.py --_memory sft     # one step's peak RSS in this fresh process
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import distill_step as DS  # noqa: E402  (its sft / ours contenders, on the student's device)
from common import peak_rss, spread  # noqa: E402
from rollout_throughput import count_hf_tokens, rates  # noqa: E402

QWEN05 = {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "inter": 4864, "vocab": 151936}  # Qwen2.5-0.5B
TINY = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "inter": 128, "vocab": 2048}
PAD, EOS = 0, 1                      # random token ids are drawn from [2, V): no row ends early
RL_GROUP = 8                         # rows per prompt in the RL step (num_generations)


# ---------------------------------------------------------------------------------------------
# Model, FLOPs, peak
# ---------------------------------------------------------------------------------------------
def qwen2(shape: dict, seed: int, device, dtype):
    """A randomly initialised Qwen2ForCausalLM of ``shape`` (tied embeddings, as Qwen2.5-0.5B),
    initialised on ``device`` (fast on a GPU) and cast to ``dtype``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["inter"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv_heads"], max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, EOS
    return model.to(dtype)


def matmul_params(shape: dict) -> tuple[int, int]:
    """(N_body, N_head): the weights every token meets in a matmul, biases left out: per layer
    q (d × h·hd), k and v (d × kv·hd each), o (h·hd × d) and the MLP's gate, up, down (3 · d × f);
    the head V × d (tied to the embedding, whose lookup is no matmul)."""
    d, L, h, kv, f, V = (shape[k] for k in ("hidden", "layers", "heads", "kv_heads", "inter", "vocab"))
    hd = d // h
    return L * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f), V * d


def attention_flops(shape: dict, B: int, T: int) -> int:
    """Forward FLOPs of causal attention's QK^T and AV for B sequences of T tokens."""
    return 2 * shape["layers"] * shape["heads"] * (shape["hidden"] // shape["heads"]) * T * T * B


def step_flops(shape: dict, kind: str, B: int, T: int, R: int) -> dict:
    """Model FLOPs of one step on B sequences of T tokens, the last R of them the response:
    sft (the head on all T), distill (student on T with the head on R, plus the frozen teacher's
    forward, its head on R too), rl (the policy, its head on the R completion tokens)."""
    body, head = matmul_params(shape)
    fwd_body = 2 * body * B * T + attention_flops(shape, B, T)             # every position
    if kind == "sft":
        return {"student": 3 * (fwd_body + 2 * head * B * T)}
    out = {"student": 3 * (fwd_body + 2 * head * B * R)}
    if kind == "distill":
        out["teacher"] = fwd_body + 2 * head * B * R
    return out


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the measured peak."""
    return flops / seconds / peak_flops


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_matmul(dev, dtype, n: int, reps: int = 10) -> dict:
    """FLOP/s of an n×n×n product on random data (3 warm-ups, median of ``reps``), alternating
    between two input sets."""
    xs = [(torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)) for _ in range(2)]
    for i in range(3):
        xs[i % 2][0] @ xs[i % 2][1]
    secs = []
    for i in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        xs[i % 2][0] @ xs[i % 2][1]
        sync(dev)
        secs.append(time.perf_counter() - t0)
    s = statistics.median(secs)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "median_s": s, "flops_per_s": 2 * n ** 3 / s}


# ---------------------------------------------------------------------------------------------
# Batches and the three steps
# ---------------------------------------------------------------------------------------------
class Batches:
    """What distill_step's contenders read from their ``Setup``, at any model size: ``prompts``
    (P tokens) and ``teacher_resp`` (the R-token responses: cached "teacher" responses for the
    distillation and SFT steps, completions for the RL step), ``batch_of(r)`` (B problems),
    ``student()`` / ``teacher()`` (fresh copies on the device), ``eos``, ``pad``, ``T`` (= R)."""

    def __init__(self, student0, teacher0, B: int, P: int, R: int, dev, n_batches: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        V = student0.config.vocab_size
        self.student0, self.teacher0, self.dev = student0, teacher0, dev
        self.B, self.P, self.T, self.eos, self.pad = B, P, R, EOS, PAD
        self.prompts = torch.randint(2, V, (B * n_batches, P), generator=g).tolist()
        self.teacher_resp = torch.randint(2, V, (B * n_batches, R), generator=g).tolist()
        self.batches = [list(range(i * B, (i + 1) * B)) for i in range(n_batches)]

    def batch_of(self, r: int) -> list[int]:
        return self.batches[r % len(self.batches)]

    def student(self):
        return copy.deepcopy(self.student0).to(self.dev).train()

    def teacher(self):
        return copy.deepcopy(self.teacher0).to(self.dev).eval().requires_grad_(False)


def rl_update(setup: Batches):
    """One RL policy update as ``paced rl`` runs it after its rollouts: GRPO advantages of random
    0/1 rewards over groups of ``RL_GROUP`` rows, ``pack_batch`` (one micro-batch), ``targets_for``,
    then ``optimise`` (the token-level clipped surrogate, loss_type dapo, ε 0.2, β 0: no reference,
    num_iterations 1, backward, clip 1.0, AdamW)."""
    from accelerate import Accelerator

    from paced.train import rl as RL
    from paced.train.optimization import make_optimizer, make_scheduler
    from paced.train.rl_batch import pack_batch, targets_for
    policy = setup.student()
    opt = make_optimizer(policy.parameters(), "adamw", 1e-5, 0.0, 0.9, 0.99)
    sched = make_scheduler(opt, "constant", 0, 1)
    acc = Accelerator(cpu=setup.dev.type == "cpu")
    spec = RL.LossSpec(temperature=1.0, num_iterations=1, loss_type="dapo", epsilon=0.2, epsilon_high=0.2, beta=0.0,
                       entropy_coef=0.0, vf_coef=0.1, cliprange_value=0.2, guide=False, guide_shaping="percentile",
                       guide_quantile=0.9, guide_gamma=1.0, guide_power=0.5, is_correction=False, is_cap=2.0)
    G = min(RL_GROUP, setup.B)
    trainable = RL._Params(list(policy.parameters()))

    def step(r: int) -> dict:
        idx = setup.batch_of(r)
        won = torch.randint(0, 2, (len(idx),), generator=torch.Generator().manual_seed(abs(r))).float()  # (B,)
        groups = [{"prompt": setup.prompts[idx[s]], "completions": [setup.teacher_resp[i] for i in idx[s:s + G]],
                   "rewards": won[s:s + G], "sample_logp": [torch.zeros(setup.T)] * len(idx[s:s + G]),
                   "hinted": False} for s in range(0, len(idx), G)]
        batch = pack_batch(groups, len(idx), setup.pad, setup.dev)
        t = targets_for(acc, policy, None, None, batch, "grpo", {"scale_rewards": "group"}, False, 1.0, 0.95,
                        True, 1.0, False, setup.T)
        stats, _, _ = RL.optimise(acc, policy, None, trainable, opt, sched, batch, t, spec, None, 1.0, 1, r, None)
        return {"tokens": int(batch.lengths.sum()), "loss": stats["loss"],
                "phases": {k[5:]: stats[k] for k in ("time_forward", "time_backward", "time_optimizer")}}
    return step


def make_step(kind: str, setup: Batches):
    if kind == "sft":
        return DS.sft(setup)
    if kind == "distill":
        return DS.ours(setup, "forward_kl", cache=False)    # the teacher runs every step
    return rl_update(setup)


# ---------------------------------------------------------------------------------------------
# Timing, memory, where the time goes
# ---------------------------------------------------------------------------------------------
def timed(step, dev, warmup: int, steps: int, budget_s: float) -> dict:
    """Seconds per step (synchronised), after ``warmup`` steps; at least 2 timed steps, then stop
    once ``budget_s`` is spent. On CUDA also the allocated bytes before the timed steps (weights,
    optimizer state, caches: ``rest_bytes``) and their peak (``peak_bytes``)."""
    for w in range(warmup):
        step(-1 - w)
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        rest = torch.cuda.memory_allocated(dev)
    secs, outs, start = [], [], time.perf_counter()
    for r in range(steps):
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
        sync(dev)
        t0 = time.perf_counter()
        outs.append(step(r))
        sync(dev)
        secs.append(time.perf_counter() - t0)
    out = {**spread(secs), "steps": len(secs), "outs": outs}
    if dev.type == "cuda":
        out.update(rest_bytes=rest, peak_bytes=torch.cuda.max_memory_allocated(dev))
    return out


CATEGORIES = (  # op (or enclosing op) name -> where its time goes: the first that matches, outermost first
    ("optimizer", r"^Optimizer\.|clip_grad|_foreach|adam"),
    ("attention", r"scaled_?dot_?product|flash|efficient_attention|cudnn_attention|fused_sdp"),
    ("matmul", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|addmv|mv|_scaled_mm)$"),
    ("softmax/exp", r"softmax|logsumexp|^aten::exp|cross_entropy|nll_loss|kl_div"),
    ("copies/casts", r"copy_|_to_copy|^aten::to$|clone|^aten::cat$|index|gather|scatter|embedding|contiguous"),
)


def category(ev) -> str:
    """``CATEGORIES``' name for a profiled op: the first pattern that matches the outermost op
    enclosing it (the optimizer's step, an attention call), else its own name; "other
    elementwise" (norms, RoPE, activations, masks) when none does. "softmax/exp" is mostly the
    losses' full-vocabulary work (log-softmax, exp of the chunked KL / log-probs, cross-entropy);
    "copies/casts": dtype casts (the fp32 upcast of each logits chunk), copies, indexing."""
    chain = []
    while ev is not None:
        chain.append(ev.name)
        ev = ev.cpu_parent
    for name in reversed(chain):
        for cat, pat in CATEGORIES:
            if re.search(pat, name, re.IGNORECASE):
                return cat
    return "other elementwise"


def categorise(events, cuda: bool) -> dict[str, float]:
    """Seconds per ``category`` of the profiled ops, each op's own time: on the GPU its kernels'
    (attributed to the innermost op that launched them), on the CPU its own CPU time."""
    out = {c: 0.0 for c, _ in CATEGORIES} | {"other elementwise": 0.0}
    for ev in events:
        if str(ev.device_type).split(".")[-1] != "CPU" or getattr(ev, "is_user_annotation", False):
            continue
        us = (getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0) or 0) if cuda \
            else ev.self_cpu_time_total
        out[category(ev)] += us / 1e6
    return out


def breakdown(step, dev) -> dict:
    """One step under torch.profiler: seconds per category, their sum, the profiled wall time and
    (CUDA) the share of it with no kernel running, an upper bound on Python / launch overhead and
    host syncs (the profiler's own overhead falls there too)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sync(dev)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        step(7)
        sync(dev)
    wall = time.perf_counter() - t0
    cats = categorise(prof.events(), dev.type == "cuda")
    busy = sum(cats.values())
    return {"categories_s": cats, "busy_s": busy, "wall_s": wall,
            "idle_share": max(0.0, 1 - busy / wall) if dev.type == "cuda" else None}


def kl_seconds(setup: Batches, dtype, reps: int = 3) -> dict:
    """The distillation loss alone at the step's shape: ``chunked_token_loss`` (forward KL, full
    vocabulary, chunks of distill_step's CHUNK positions; both heads inside) forward + backward on
    (B, R, H) hidden states, seconds (median of ``reps`` after one warm-up)."""
    from paced.losses import chunked_token_loss, forward_kl
    from paced.models import logits_head
    student, teacher = setup.student(), setup.teacher()
    H = student.config.hidden_size
    h_s = torch.randn(setup.B, setup.T, H, device=setup.dev, dtype=dtype, requires_grad=True)   # (B, R, H)
    h_t = torch.randn(setup.B, setup.T, H, device=setup.dev, dtype=dtype)                       # (B, R, H)
    head_s, head_t, secs = logits_head(student), logits_head(teacher), []
    for i in range(reps + 1):
        sync(setup.dev)
        t0 = time.perf_counter()
        chunked_token_loss(h_s, h_t, head_s, head_t, forward_kl, chunk_size=DS.CHUNK).sum().backward()   # (B, R)
        sync(setup.dev)
        secs.append(time.perf_counter() - t0)
        h_s.grad = None
        student.zero_grad(set_to_none=True)
    return {"median_s": statistics.median(secs[1:]), "chunk_size": DS.CHUNK}


def free(dev) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------
def rollout(model, prompts: int, n: int, max_new: int, P: int, repeats: int, budget_s: float) -> dict:
    """Tokens/s of ``paced.rollout.sample`` and HF ``generate`` on the same model, ``prompts``
    random P-token prompts × n samples (T = 1, no top-k / top-p: one chunk of prompts·n rows) and
    rollout_throughput.py's ``rates`` (interleaved, one warm-up each) and ``count_hf_tokens``. A
    probe of 8 new tokens each first: when the timed calls would overrun ``budget_s``, fewer new
    tokens (at least 16) are timed, and ``max_new_tokens`` says how many."""
    from paced.rollout import SamplingParams, sample
    dev, V = next(model.parameters()).device, model.config.vocab_size
    ids = torch.randint(2, V, (prompts, P), generator=torch.Generator().manual_seed(0)).tolist()
    batch = torch.tensor(ids, device=dev)                                   # (prompts, P): no padding

    def ours(T):
        return lambda r: int(sample(model, ids, SamplingParams(n=n, temperature=1.0, max_tokens=T, seed=r),
                                    eos_token_id=EOS, pad_token_id=PAD, batch_size=prompts * n).lengths.sum())

    def hf(T):
        def call(r):
            torch.manual_seed(r)
            with torch.no_grad():
                out = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True, temperature=1.0,
                                     top_k=0, top_p=1.0, max_new_tokens=T, num_return_sequences=n,
                                     eos_token_id=EOS, pad_token_id=PAD)            # (prompts·n, P + T)
            return count_hf_tokens(out.cpu(), P, EOS, PAD)
        return call

    per_token = {}
    for name, fn in (("ours", ours), ("hf", hf)):
        fn(2)(0)                                                            # kernels, caches
        sync(dev)
        t0 = time.perf_counter()
        fn(8)(0)
        sync(dev)
        per_token[name] = (time.perf_counter() - t0) / 8
    calls = repeats + 1                                                     # rates() warms up once
    fits = int(budget_s / (calls * sum(per_token.values())))
    T = max(16, min(max_new, fits))
    got = rates({"ours": ours(T), "hf": hf(T)}, repeats)
    med = {k: statistics.median(v) for k, v in got.items()}
    return {"prompts": prompts, "n": n, "rows": prompts * n, "prompt_tokens": P, "max_new_tokens": T,
            "max_new_tokens_asked": max_new, "repeats": repeats, "probe_s_per_token": per_token,
            "ours_tok_s": med["ours"], "hf_tok_s": med["hf"], "ratio": med["ours"] / med["hf"], "all": got,
            "ours_s_per_step": prompts * n / med["ours"]}


def draw_cost(rows: int, vocab: int, dev, reps: int = 5) -> dict:
    """Seconds of one decode step's draw at (rows, V) fp32 probabilities: the sampler's own (the
    probabilities copied to the host, ``torch.multinomial`` with a CPU generator: paced/rollout.py)
    and, on CUDA, ``torch.multinomial`` on the device (what a device generator would cost)."""
    probs = torch.rand(rows, vocab, device=dev).softmax(-1)                # (rows, V)
    ways = {"host_multinomial": lambda g: torch.multinomial(probs.cpu(), 1, generator=g).to(dev)}
    if dev.type == "cuda":
        ways["device_multinomial"] = lambda g: torch.multinomial(probs, 1, generator=g)
    out = {}
    for name, fn in ways.items():
        g = torch.Generator(device="cpu" if name.startswith("host") else dev).manual_seed(0)
        fn(g)
        secs = []
        for _ in range(reps):
            sync(dev)
            t0 = time.perf_counter()
            fn(g)
            sync(dev)
            secs.append(time.perf_counter() - t0)
        out[name + "_s"] = statistics.median(secs)
    return out


# ---------------------------------------------------------------------------------------------
# CPU memory: one step's peak RSS in a fresh process (benchmarks/common.py's in_child)
# ---------------------------------------------------------------------------------------------
def memory_child(kind: str, B: int, T: int, steps: int = 2) -> dict:
    """Resting RSS after warm-up, then the peak over ``steps`` steps, of one step ``kind`` on the
    tiny shape in bf16 (what the CPU mode measures instead of CUDA's allocator)."""
    dev, P = torch.device("cpu"), T // 4
    student0, teacher0 = qwen2(TINY, 0, dev, torch.bfloat16), qwen2(TINY, 1, dev, torch.bfloat16)
    setup = Batches(student0, teacher0, B, P, T - P, dev)
    step = make_step(kind, setup)
    for w in range(len(setup.batches)):
        step(-1 - w)
    rest, peak, _ = peak_rss(lambda: [step(r) for r in range(steps)])
    return {"rest_mib": rest / 2 ** 20, "peak_mib": peak / 2 ** 20, "step_delta_mib": (peak - rest) / 2 ** 20}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="gpu_check's memory child (benchmarks/common.py in_child)")
    ap.add_argument("--_memory", required=True, choices=["sft", "distill", "rl"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps(memory_child(a._memory, a.batch, a.seq)))
