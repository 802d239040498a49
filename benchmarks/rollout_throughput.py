"""Tokens/s of paced's sampler against Hugging Face ``model.generate``, same model and settings.

    python benchmarks/rollout_throughput.py --quick      # ~1 minute
    python benchmarks/rollout_throughput.py              # the README's numbers (a few minutes)

For each size (the ``tiny`` preset and the ~15M-parameter ``base15m``): the same prompts (the
built-in ``add`` family, rendered with the chat template), n samples per prompt, temperature 1,
no top-k/top-p, the same max_new_tokens, fp32 on CPU. Both samplers are timed in alternation,
``repeats`` times each, after one warm-up call of each; the table reports the median tokens/s and
the ratio ours / HF. Tokens counted: generated tokens up to and including EOS (HF's padding
after EOS is not counted). Weights are random (a freshly initialised model), which decodes to
max length most of the time — the least favourable case for our early-exit batch compaction.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paced.models import char_tokenizer, encode_prompts, tiny_model  # noqa: E402
from paced.rollout import SamplingParams, sample  # noqa: E402
from paced.tasks.synthetic import generate  # noqa: E402


def count_hf_tokens(out: torch.Tensor, prompt_len: int, eos: int, pad: int) -> int:
    gen = out[:, prompt_len:]                                              # (N, T)
    is_eos = gen == eos
    # tokens up to the first EOS (inclusive); rows without EOS count every position
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full((gen.size(0),), gen.size(1)))
    return int(first.sum())


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

    rates = {"ours": [], "hf": []}
    for name, fn in (("ours", ours), ("hf", hf)):
        fn(-1)  # warm-up
    for r in range(repeats):
        for name, fn in (("ours", ours), ("hf", hf)):
            t0 = time.perf_counter()
            tokens = fn(r)
            rates[name].append(tokens / (time.perf_counter() - t0))
    ours_med, hf_med = statistics.median(rates["ours"]), statistics.median(rates["hf"])
    return {"preset": preset, "parameters": sum(p.numel() for p in model.parameters()),
            "prompts": prompts, "n": n, "max_new_tokens": max_new, "repeats": repeats,
            "ours_tok_s": ours_med, "hf_tok_s": hf_med, "ratio": ours_med / hf_med,
            "ours_all": rates["ours"], "hf_all": rates["hf"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    ap.add_argument("--out", default="benchmarks/results/rollout_throughput.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    rows = [bench_size("tiny", prompts=32, n=8, max_new=32, repeats=repeats, seed=0),
            bench_size("base15m", prompts=8, n=4, max_new=32, repeats=max(2, repeats - 2), seed=0)]
    print(f"{'preset':<9} {'params':>10} {'batch':>7} {'ours tok/s':>11} {'HF tok/s':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['preset']:<9} {r['parameters']:>10,} {r['prompts'] * r['n']:>7} "
              f"{r['ours_tok_s']:>11.0f} {r['hf_tok_s']:>10.0f} {r['ratio']:>6.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "quick": args.quick,
            "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
