"""Sampling + verification, shared by ``paced eval``, ``paced passrate`` and the trainers.

    paced eval --config configs/eval.yaml model.path=runs/demo/student/model

``rollout_and_verify`` draws n completions per example with the one sampler and checks each;
``evaluate`` turns those counts into the pass@k table (unbiased estimator, docs/methods.md §2),
mean@n accuracy and greedy accuracy, overall and per source.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from .ledger import default_ks, pass_at_k
from .models import encode_prompts, prompt_room, stop_token_ids
from .rollout import SAMPLERS, Rollouts, SamplingParams
from .tasks import Example, verify
from .tasks.answers import UNDECIDED


def rollout_and_verify(model, tokenizer, examples: list[Example], params: SamplingParams,
                       batch_size: int = 256, progress: bool = False, backend: str = "hf",
                       system_prompt: str = "default",
                       long_prompts: str = "error") -> tuple[Rollouts, list[str], torch.Tensor]:
    """Sample ``params.n`` completions per example; returns (rollouts, texts, rewards (N,)).
    Completions end at any of the model's stop tokens (``stop_token_ids``); a completion cut at
    ``max_tokens`` is credited only with an explicit final answer (``tasks.verify``); a prompt
    that with ``max_tokens`` overflows the model's context follows ``long_prompts`` (``fit_prompts``)."""
    prompt_ids = encode_prompts(tokenizer, [e.prompt for e in examples], system_prompt,
                                prompt_room(params.max_tokens, model), long_prompts, [e.id for e in examples])
    ro = SAMPLERS[backend](model, prompt_ids, params, eos_token_id=stop_token_ids(model, tokenizer),
                           pad_token_id=tokenizer.pad_token_id, batch_size=batch_size,
                           progress=progress)
    texts = ro.texts(tokenizer)
    rewards = torch.tensor([float(verify(t, examples[int(i)], f))
                            for t, i, f in zip(texts, ro.prompt_index, ro.finished.tolist())])
    return ro, texts, rewards


def success_counts(rewards: torch.Tensor, n_prompts: int, n: int) -> list[int]:
    """Correct samples per prompt from grouped rewards (N = n_prompts * n,)."""
    return rewards.view(n_prompts, n).sum(-1).long().tolist()


def evaluate(model, tokenizer, examples: list[Example], n: int, ks: list[int] | None = None,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, max_tokens: int = 32,
             greedy: bool = True, batch_size: int = 256, seed: int = 0, progress: bool = False,
             keep_samples: int = 2, backend: str = "hf", system_prompt: str = "default",
             long_prompts: str = "error") -> dict:
    """pass@k (k in ``ks``, default 1, 2, 4, ... <= n), mean@n and greedy accuracy.

    Per problem the result keeps ``keep_samples`` sampled completions (-1 = all n) with their
    verdicts and token counts, the greedy completion, and how many rows ran out of tokens
    (``truncated``); ``timing`` holds the seconds and tokens of each pass."""
    ks = sorted(set(ks or default_ks(n)))
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                            max_tokens=max_tokens, seed=seed)
    kw = dict(backend=backend, system_prompt=system_prompt, long_prompts=long_prompts)
    t0 = time.perf_counter()
    undecided = UNDECIDED["count"]   # verdicts math-verify timed out on, before this evaluation
    ro, texts, rewards = rollout_and_verify(model, tokenizer, examples, params, batch_size, progress, **kw)
    timing = {"sampled": _timing(ro, time.perf_counter() - t0)}
    counts = success_counts(rewards, len(examples), n)
    lengths, done, ok = ro.lengths.tolist(), ro.finished.tolist(), rewards.bool().tolist()
    greedy_ok, greedy_text, greedy_len = [None] * len(examples), [None] * len(examples), [None] * len(examples)
    if greedy:
        gp = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed)
        t0 = time.perf_counter()
        g_ro, greedy_text, g = rollout_and_verify(model, tokenizer, examples, gp, batch_size, progress, **kw)
        timing["greedy"] = _timing(g_ro, time.perf_counter() - t0)
        greedy_ok, greedy_len = [bool(x) for x in g.tolist()], g_ro.lengths.tolist()
    keep = n if keep_samples < 0 else min(keep_samples, n)
    problems = []
    for i, (e, c) in enumerate(zip(examples, counts)):
        rows = range(i * n, (i + 1) * n)
        problems.append({
            "id": e.id, "source": e.source, "difficulty": e.difficulty, "n": n, "c": c,
            "greedy": greedy_ok[i], "greedy_text": greedy_text[i], "greedy_tokens": greedy_len[i],
            "mean_tokens": float(np.mean([lengths[r] for r in rows])),
            "truncated": sum(not done[r] for r in rows),
            "samples": [{"text": texts[r], "correct": ok[r], "tokens": lengths[r]} for r in rows[:keep]]})
    groups, levels = defaultdict(list), defaultdict(list)
    for p in problems:
        groups[p["source"]].append(p)
        if p["difficulty"] is not None:
            levels[f"{p['source']}/d{p['difficulty']}"].append(p)
    return {"n": n, "ks": ks, "temperature": temperature, "top_p": top_p, "top_k": top_k,
            "max_completion_length": max_tokens, "timing": timing,
            "undecided": UNDECIDED["count"] - undecided,   # math-verify timeouts, counted wrong
            "overall": aggregate(problems, ks),
            "by_source": {s: aggregate(ps, ks) for s, ps in groups.items()},
            "by_difficulty": {s: aggregate(levels[s], ks) for s in sorted(levels, key=_level_key)},
            "problems": problems}


def _timing(ro: Rollouts, seconds: float) -> dict:
    """Seconds, completions, generated tokens and tokens/s of one sampling pass."""
    tokens = int(ro.lengths.sum())
    return {"seconds": round(seconds, 3), "completions": int(ro.lengths.numel()), "tokens": tokens,
            "tokens_per_s": tokens / max(seconds, 1e-9)}


def _level_key(name: str) -> tuple[str, int]:
    source, level = name.rsplit("/d", 1)
    return source, int(level)


def aggregate(problems: list[dict], ks: list[int]) -> dict:
    """Mean over problems of pass@k, of c/n (mean@n) and of greedy correctness."""
    out = {"problems": len(problems)}
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(p["n"], p["c"], k) for p in problems]))
    out["mean@n"] = float(np.mean([p["c"] / p["n"] for p in problems]))
    if problems and "mean_tokens" in problems[0]:
        out["mean_tokens"] = float(np.mean([p["mean_tokens"] for p in problems]))
        out["truncated_share"] = sum(p["truncated"] for p in problems) / sum(p["n"] for p in problems)
    g = [p["greedy"] for p in problems if p["greedy"] is not None]
    out["greedy"] = float(np.mean(g)) if g else None
    return out


def table(results: dict[str, dict], title: str = "evaluation"):
    """A rich table: one row per named result (model or source), columns pass@k / mean / greedy."""
    from rich.table import Table

    first = next(iter(results.values()))
    cols = [k for k in first if k.startswith("pass@")] + ["mean@n", "greedy"]
    t = Table(title=title)
    t.add_column("")
    t.add_column("problems", justify="right")
    for c in cols:
        t.add_column(c, justify="right")
    for name, r in results.items():
        t.add_row(name, str(r["problems"]),
                  *("-" if r.get(c) is None else f"{r[c]:.3f}" for c in cols))
    return t


def run(cfg) -> dict:
    """``paced eval``: evaluate ``model`` on ``data.eval`` (or ``data.train`` if no eval set);
    writes eval.json and passk.png (pass@k curves: all problems, and each source if several)."""
    from .analysis.plots import passk_curves, passk_from_eval
    from .rundir import load_model, start_run
    from .runlog import console, write_json
    from .tasks import load_sources

    run_dir = start_run(cfg)
    sources = cfg.data.eval or cfg.data.train
    examples = load_sources(sources, "data.eval" if cfg.data.eval else "data.train")
    model, tok, path = load_model(cfg.model.path, cfg.model.preset, cfg.model.init_seed,
                                  cfg.model.dtype, run_dir)
    e, s = cfg.eval, cfg.sampling
    result = evaluate(model, tok, examples, e.n, e.ks or None, s.temperature, s.top_p, s.top_k,
                      s.max_completion_length, e.greedy, s.batch_size, cfg.run.seed,
                      cfg.run.progress, keep_samples=e.save_samples, backend=cfg.engine.backend,
                      system_prompt=cfg.model.system_prompt, long_prompts=cfg.model.long_prompts)
    result["model"] = path
    if s.temperature > 0:   # the samples are evidence about p: into the ledger, as paced passrate's
        from .ledger import Ledger
        from .rundir import model_tag
        ledger = Ledger(cfg.ledger.path or run_dir / "ledger.sqlite")
        counts: dict[str, list[int]] = {}
        for p in result["problems"]:
            ck = counts.setdefault(p["id"], [0, 0])
            ck[0], ck[1] = ck[0] + p["c"], ck[1] + p["n"]
        ledger.record(counts, model=cfg.ledger.model or model_tag(path), stage=cfg.ledger.stage)
        result["ledger"] = str(ledger.path)
    write_json(run_dir / "eval.json", result)
    rows = {"all": result["overall"], **result["by_source"]}
    console.print(table(rows, f"eval: {path} (n={e.n}, T={s.temperature})"))
    if result["undecided"]:
        console.print(f"[yellow]{result['undecided']} verdicts undecided (math-verify timed out twice; "
                      f"counted wrong): raise run.math_timeout (now {cfg.run.math_timeout} s)[/]")
    console.print(f"wrote {run_dir / 'eval.json'}")
    curves = {"all": passk_from_eval(result)}
    if len(result["by_source"]) > 1:
        curves.update({s: passk_from_eval(result, s) for s in result["by_source"]})
    if passk_curves(curves, run_dir / "passk.png", f"pass@k: {path} (n={e.n}, T={s.temperature})"):
        console.print(f"wrote {run_dir / 'passk.png'}")
    return result
