"""Tokens/s of paced's sampler against Hugging Face ``model.generate``, same model and settings.

    python benchmarks/rollout_throughput.py --quick      # ~1 minute
    python benchmarks/rollout_throughput.py              # the README's numbers (a few minutes)

For each size (the ``tiny`` preset and the ~15M-parameter ``base15m``): the same prompts (the
built-in ``add`` family, rendered with the chat template), n samples per prompt, temperature 1,
no top-k/top-p, the same max_new_tokens, fp32 on CPU. Both samplers are timed in alternation
(``interleaved``: the order rotates each round), ``repeats`` times each, after one warm-up call
of each; the table reports the median tokens/s and
the ratio ours / HF. Tokens counted: generated tokens up to and including EOS (HF's padding
after EOS is not counted). Weights are random (a freshly initialised model), which decodes to
max length most of the time — the least favourable case for our early-exit batch compaction.

The real model (``--model``, default the built-in ``smollm2-135m-instruct``; ``--model none``
skips it): paced's sampler, HF ``generate`` and, where vllm imports (.venv-vllm), vLLM through
``engine.backend vllm`` — the same chat-rendered prompts (left-padded for HF), n per prompt, T = 1,
every stop token of the model; plus what a weight sync costs (one decoder layer / all weights)
and |vLLM − trainer| log-probs of the sampled tokens. Without vllm those columns are skipped.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, median, parser, table, write_json  # noqa: E402
from paced.models import (char_tokenizer, encode_prompts, load_model_and_tokenizer,  # noqa: E402
                          stop_token_ids, tiny_model)
from paced.rollout import SAMPLERS, SamplingParams, sample  # noqa: E402
from paced.tasks.synthetic import generate  # noqa: E402


def count_hf_tokens(out: torch.Tensor, prompt_len: int, eos, pad: int) -> int:
    gen = out[:, prompt_len:]                                              # (N, T)
    is_eos = torch.isin(gen, torch.tensor([eos] if isinstance(eos, int) else list(eos)))
    # tokens up to the first EOS (inclusive); rows without EOS count every position
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full((gen.size(0),), gen.size(1)))
    return int(first.sum())


def rates(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Tokens/s of each sampler call, interleaved, after one warm-up call each."""
    t = interleaved(fns, repeats, warmup=1)
    return {k: [tokens / sec for tokens, sec in zip(t.results[k], t.seconds[k])] for k in fns}


def bench_size(preset: str, prompts: int, n: int, max_new: int, repeats: int, seed: int) -> dict:
    tok = char_tokenizer()
    model = tiny_model(preset, vocab_size=len(tok), seed=seed).eval()
    examples = generate("add", prompts, seed=0, difficulty=(1, 8))
    ids = encode_prompts(tok, [e.prompt for e in examples])
    # all add prompts render to the same length, so HF needs no padding: a like-for-like batch
    assert len({len(p) for p in ids}) == 1
    batch = torch.tensor(ids)
    eos, pad = tok.eos_token_id, tok.pad_token_id

    def ours(r: int):
        ro = sample(model, ids, SamplingParams(n=n, temperature=1.0, max_tokens=max_new, seed=r),
                    eos_token_id=eos, pad_token_id=pad, batch_size=prompts * n)
        return int(ro.lengths.sum())

    def hf(r: int):
        torch.manual_seed(r)
        with torch.no_grad():
            out = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new,
                                 num_return_sequences=n, eos_token_id=eos, pad_token_id=pad)
        return count_hf_tokens(out, batch.size(1), eos, pad)

    got = rates({"ours": ours, "hf": hf}, repeats)
    ours_med, hf_med = median(got["ours"]), median(got["hf"])
    return {"preset": preset, "parameters": sum(p.numel() for p in model.parameters()),
            "prompts": prompts, "n": n, "max_new_tokens": max_new, "repeats": repeats,
            "ours_tok_s": ours_med, "hf_tok_s": hf_med, "ratio": ours_med / hf_med,
            "ours_all": got["ours"], "hf_all": got["hf"]}


def bench_real(path: str, prompts: int, n: int, max_new: int, repeats: int) -> dict:
    """paced's sampler, HF generate and (if importable) vLLM on a real model directory or name."""
    import importlib.util
    model, tok = load_model_and_tokenizer(path)
    model.eval()
    stops, pad = stop_token_ids(model, tok), tok.pad_token_id
    examples = generate("add", prompts, seed=0, difficulty=(1, 8))
    ids = encode_prompts(tok, [e.prompt for e in examples])
    enc = tok.pad({"input_ids": ids}, return_tensors="pt")             # left padding
    params = lambda r: SamplingParams(n=n, temperature=1.0, max_tokens=max_new, seed=r)  # noqa: E731

    def ours(r: int):
        return int(sample(model, ids, params(r), eos_token_id=stops, pad_token_id=pad).lengths.sum())

    def hf(r: int):
        torch.manual_seed(r)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new, num_return_sequences=n, eos_token_id=stops,
                                 pad_token_id=pad)
        return count_hf_tokens(out, enc["input_ids"].size(1), stops, pad)

    fns = {"ours": ours, "hf": hf}
    row = {"model": path, "parameters": sum(p.numel() for p in model.parameters()), "prompts": prompts,
           "n": n, "max_new_tokens": max_new, "repeats": repeats}
    if importlib.util.find_spec("vllm") is not None:
        from paced import vllm_engine
        t0 = time.perf_counter()
        vllm_engine.engine(model)
        row["vllm_start_s"] = time.perf_counter() - t0                 # import + engine start-up

        def vllm(r: int):
            return int(SAMPLERS["vllm"](model, ids, params(r), eos_token_id=stops, pad_token_id=pad).lengths.sum())
        fns["vllm"] = vllm
    got = rates(fns, repeats)
    med = {k: median(v) for k, v in got.items()}
    row.update({f"{k}_tok_s": v for k, v in med.items()}, all=got, ours_over_hf=med["ours"] / med["hf"])
    if "vllm" in fns:
        row["vllm_over_hf"] = med["vllm"] / med["hf"]
        row.update(vllm_checks(model, ids, stops, pad))
    return row


def vllm_checks(model, ids, stops, pad) -> dict:
    """|vLLM − trainer| log-probs of sampled tokens (T = 1), and what weight syncs cost."""
    from paced import vllm_engine
    from paced.train.batches import pack
    from paced.train.logprobs import completion_logprobs
    ro = SAMPLERS["vllm"](model, ids[:8], SamplingParams(n=2, temperature=1.0, max_tokens=32, seed=0),
                          eos_token_id=stops, pad_token_id=pad)
    comps = [c[:int(k)] for c, k in zip(ro.completion_ids.tolist(), ro.lengths)]
    x, mask, pos, P = pack([ids[int(i)] for i in ro.prompt_index], comps, pad)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, x, mask, pos, P, x.shape[1] - P, 1.0)
    d = (lp[:, :ro.sample_logp.shape[1]] - ro.sample_logp)[ro.completion_mask.bool()].abs()
    out = {"logprob_diff_max": float(d.max()), "logprob_diff_mean": float(d.mean()), "logprob_tokens": d.numel()}
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0"))
    for name, params in (("sync_one_layer", list(layer.parameters())), ("sync_all", list(model.parameters()))):
        times = []
        for _ in range(3):
            with torch.no_grad():
                for p in params:
                    p.add_(0.0)                                         # "changed": versions bump
            s = vllm_engine.sync_weights(model)
            times.append(s["seconds"])
        out[name] = {"seconds": median(times), "bytes": s["bytes"], "tensors": s["tensors"]}
    return out


def main() -> None:
    ap = parser(__doc__, "fewer repeats (about a minute)")
    ap.add_argument("--out", default="rollout_throughput.json", help="a file name in benchmarks/results/, or a path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="real model directory or built-in name for the HF / vLLM comparison ('none': skip)")
    ap.add_argument("--real-only", action="store_true", help="skip the tiny / base15m presets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    rows = [] if args.real_only else [
        bench_size("tiny", prompts=32, n=8, max_new=32, repeats=repeats, seed=0),
        bench_size("base15m", prompts=8, n=4, max_new=32, repeats=max(2, repeats - 2), seed=0)]
    real = None
    if args.model != "none":
        real = bench_real(args.model, prompts=16 if args.quick else 32, n=4, max_new=64,
                          repeats=1 if args.quick else 3)
        cols = [k for k in ("ours", "hf", "vllm") if f"{k}_tok_s" in real]
        print(f"{real['model']}: " + ", ".join(f"{k} {real[k + '_tok_s']:.0f} tok/s" for k in cols)
              + f"; ours/HF {real['ours_over_hf']:.2f}"
              + (f", vLLM/HF {real['vllm_over_hf']:.2f}" if "vllm" in cols else " (vllm not installed)"))
    print(*table(["preset", "params", "batch", "ours tok/s", "HF tok/s", "ratio"],
                 [[r["preset"], f"{r['parameters']:,}", r["prompts"] * r["n"], f"{r['ours_tok_s']:.0f}",
                   f"{r['hf_tok_s']:.0f}", f"{r['ratio']:.2f}"] for r in rows]), sep="\n")
    meta = {"torch": torch.__version__, "threads": args.threads, "quick": args.quick,
            "date": time.strftime("%Y-%m-%d")}
    print(f"wrote {write_json(args.out, {'meta': meta, 'machine': machine(), 'rows': rows, 'real': real})}")


if __name__ == "__main__":
    main()
