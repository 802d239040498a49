"""Estimate the student's pass rate p̂ per problem and inspect the ledger.

    paced passrate --config configs/passrate.yaml model.path=runs/demo/student/model
    paced ledger runs/demo/ledger.sqlite

``estimate``: K = ``passrate.num_generations`` rollouts per problem of ``data.train`` with the
shared sampler, each verified, (successes, K) appended to the ledger under (model, stage) in one
transaction per sampler batch — so a run killed half-way keeps every finished batch.
``estimate_sequential`` (``passrate.adaptive``): rounds of a few rollouts for the problems whose
weight is not yet settled (``paced.posterior.SETTLED``), up to a cap; unequal trials per problem.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from .evaluate import rollout_and_verify, success_counts
from .ledger import Ledger, histogram
from .posterior import SETTLED
from .weighting import problem_weights
from .rollout import SamplingParams
from .runlog import Progress, console, write_json
from .tasks.answers import take_undecided


def estimate(model, tokenizer, examples, ledger: Ledger, k: int, params: SamplingParams,
             model_name: str, stage: str, step: int = 0, batch_size: int = 256,
             progress: bool = False, backend: str = "hf",
             system_prompt: str = "default", long_prompts: str = "error",
             recorded: dict | None = None) -> dict[str, tuple[int, int]]:
    """Draw K rollouts per example, verify, record; returns {id: (successes, K)}.

    Batches and their seeds are fixed by the positions in ``examples``; a batch whose problems
    are all in ``recorded`` (ledger counts a killed run already wrote: one transaction per batch)
    is taken from it and not sampled again, so a resumed estimate equals an uninterrupted one."""
    per_call = max(1, batch_size // k)           # prompts per sampler call
    out: dict[str, tuple[int, int]] = {}
    recorded = recorded or {}
    starts = range(0, len(examples), per_call)
    bar = Progress(len(starts), "pass rates", progress)
    for s in starts:
        batch = examples[s: s + per_call]
        if all(e.id in recorded for e in batch):
            out.update({e.id: recorded[e.id] for e in batch})
            bar.update()
            continue
        p = SamplingParams(n=k, temperature=params.temperature, top_p=params.top_p,
                           top_k=params.top_k, max_tokens=params.max_tokens, seed=params.seed + s)
        _, _, rewards = rollout_and_verify(model, tokenizer, batch, p, batch_size, backend=backend,
                                           system_prompt=system_prompt, long_prompts=long_prompts)
        got = {e.id: (c, k) for e, c in zip(batch, success_counts(rewards, len(batch), k))}
        ledger.record(got, model=model_name, stage=stage, step=step)
        out.update(got)
        bar.update()
    bar.close()
    return out


def estimate_sequential(model, tokenizer, examples, ledger: Ledger, rule: Callable, round_size: int, cap: int,
                        params: SamplingParams, model_name: str, stage: str, step: int = 0,
                        batch_size: int = 256, progress: bool = False, backend: str = "hf",
                        system_prompt: str = "default", long_prompts: str = "error",
                        recorded: dict | None = None) -> dict[str, tuple[int, int]]:
    """Sequential estimate: rounds of ``round_size`` rollouts for every problem not yet settled,
    until ``rule(c, k)`` ((n,) counts -> (n,) bool) settles it or ``cap`` trials are spent;
    returns {id: (successes, trials)}, trials a multiple of ``round_size`` in [round_size, cap].

    Round r samples, in ``examples`` order, every problem with k = r·round_size trials that the
    rule leaves open (round 0: all), in sampler calls of ``batch_size // round_size`` prompts,
    seed ``params.seed + r·n + s`` for the call starting at position s of the round's list; each
    call's counts are one ledger transaction. Resume: ``recorded`` (the ledger's summed counts of
    a killed run) fixes every round again — a problem with k > r·round_size was in round r, one
    with k = r·round_size is in it iff the rule leaves it open — so a call whose problems are all
    past r·round_size is taken as recorded and not sampled, and the counts equal an uninterrupted
    run's bit for bit. Raises if ``recorded`` mixes done and undone problems in one call (counts
    from another estimate)."""
    if cap % round_size:
        raise ValueError(f"estimate_sequential: cap {cap} is not a multiple of round_size {round_size}")
    n, per_call, recorded = len(examples), max(1, batch_size // round_size), recorded or {}
    c = np.array([recorded.get(e.id, (0, 0))[0] for e in examples], dtype=np.int64)   # (n,)
    k = np.array([recorded.get(e.id, (0, 0))[1] for e in examples], dtype=np.int64)   # (n,)
    bar = Progress(cap // round_size, "pass rates (rounds)", progress)
    for r in range(cap // round_size):
        base = r * round_size
        open_ = (k == base) & (~np.asarray(rule(c, k), dtype=bool) if r else True)
        members = np.flatnonzero((k > base) | open_)                                   # round r, in order
        if members.size == 0:
            break
        for s in range(0, members.size, per_call):
            call = members[s: s + per_call]
            if (k[call] > base).all():
                continue                                                                # recorded before a kill
            if not (k[call] == base).all():
                bad = examples[int(call[k[call] != base][0])].id
                raise ValueError(f"estimate_sequential: recorded counts of problem {bad!r} do not fit round {r} "
                                 f"(trials {recorded.get(bad)}, round size {round_size}): rows of another estimate "
                                 f"under the same model, stage and step?")
            batch = [examples[int(i)] for i in call]
            p = SamplingParams(n=round_size, temperature=params.temperature, top_p=params.top_p,
                               top_k=params.top_k, max_tokens=params.max_tokens, seed=params.seed + r * n + s)
            _, _, rewards = rollout_and_verify(model, tokenizer, batch, p, batch_size, backend=backend,
                                               system_prompt=system_prompt, long_prompts=long_prompts)
            got = success_counts(rewards, len(batch), round_size)
            ledger.record({e.id: (g, round_size) for e, g in zip(batch, got)}, model=model_name, stage=stage,
                          step=step)
            c[call] += got
            k[call] += round_size
        bar.update()
    bar.close()
    return {e.id: (int(ci), int(ki)) for e, ci, ki in zip(examples, c, k)}


def histogram_text(hist: dict, width: int = 40) -> str:
    """An ASCII bar chart of a ``ledger.histogram`` dict."""
    lines, top = [], max(hist["counts"] + [1])
    edges = hist["edges"]
    for i, c in enumerate(hist["counts"]):
        bar = "#" * round(width * c / top)
        lines.append(f"  [{edges[i]:.2f}, {edges[i + 1]:.2f}{']' if i == len(hist['counts']) - 1 else ')'}"
                     f" {c:>6} {bar}")
    lines.append(f"  p̂ = 0: {hist['at_zero']}   p̂ = 1: {hist['at_one']}   problems: {hist['n']}")
    return "\n".join(lines)


def run(cfg) -> dict:
    """``paced passrate``."""
    from .rundir import load_model, model_tag, start_run
    from .tasks import load_sources

    run_dir = start_run(cfg)
    examples = load_sources(cfg.data.train, "data.train")
    model, tok, path = load_model(cfg.model.path, cfg.model.preset, cfg.model.init_seed,
                                  cfg.model.dtype, run_dir)
    ledger = Ledger(cfg.ledger.path or run_dir / "ledger.sqlite")
    name = cfg.ledger.model or model_tag(path)
    s = cfg.sampling
    params = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            max_tokens=s.max_completion_length, seed=cfg.run.seed)
    pc, common = cfg.passrate, dict(batch_size=s.batch_size, progress=cfg.run.progress, backend=cfg.engine.backend,
                                    system_prompt=cfg.model.system_prompt, long_prompts=cfg.model.long_prompts)
    if pc.adaptive:   # the Beta kernel's rule at α = β = 1, PACED's default weighting
        rule = partial(SETTLED["beta"], cap=pc.max_generations, alpha=1.0, beta=1.0, tol=pc.weight_tol,
                       zero_tol=pc.zero_tol)
        counts = estimate_sequential(model, tok, examples, ledger, rule, pc.round_size, pc.max_generations, params,
                                     name, cfg.ledger.stage, **common)
    else:
        counts = estimate(model, tok, examples, ledger, pc.num_generations, params, name, cfg.ledger.stage, **common)
    p_hat = [c / k for c, k in counts.values()]
    hist = histogram(p_hat)
    rollouts = sum(k for _, k in counts.values())
    summary = {"command": "passrate", "model": name, "stage": cfg.ledger.stage,
               "ledger": str(ledger.path), "problems": len(counts),
               "num_generations": pc.num_generations, "adaptive": pc.adaptive, "rollouts": rollouts,
               "mean_pass_rate": sum(p_hat) / len(p_hat), "histogram": hist,
               "undecided": take_undecided()}   # math-verify timeouts, counted wrong
    write_json(run_dir / "summary.json", summary)
    how = (f"adaptive: {rollouts / len(counts):.1f} rollouts per problem, rounds of {pc.round_size} up to "
           f"{pc.max_generations}" if pc.adaptive else f"K = {pc.num_generations}")
    console.print(f"pass rates of {name} on {len(counts)} problems ({how}, T = {s.temperature}); "
                  f"ledger {ledger.path}")
    console.print(histogram_text(hist))
    return summary


def inspect(cfg, path: str | None = None) -> dict:
    """``paced ledger``: what the ledger holds, and the p̂ histogram of one model."""
    from rich.table import Table

    db = Path(path or cfg.ledger.path or Path(cfg.run.dir) / "ledger.sqlite")
    if db.is_dir():
        db = db / "ledger.sqlite"
    if not db.is_file():
        raise FileNotFoundError(f"no ledger at {db} (pass a ledger file or run directory)")
    ledger = Ledger(db, readonly=True)
    rows = ledger.summary()
    t = Table(title=f"ledger {db}")
    for col in ("model", "stage", "problems", "trials", "successes", "max_step"):
        t.add_column(col, justify="left" if col in ("model", "stage") else "right")
    for r in rows:
        t.add_row(*(str(r[c]) for c in ("model", "stage", "problems", "trials", "successes", "max_step")))
    console.print(t)
    model = cfg.ledger.model or (rows[-1]["model"] if rows else None)
    stages = {r["stage"] for r in rows if r["model"] == model}
    stage = cfg.ledger.stage if cfg.ledger.stage in stages else None
    if stage is None and rows:
        console.print(f"[yellow]no rows of stage {cfg.ledger.stage!r} for {model}; "
                      f"pooling its stages {sorted(stages)}[/]")
    rates = ledger.pass_rates(cfg.estimator, model=model, stage=stage)
    hist = histogram(list(rates.values()), bins=cfg.bins)
    console.print(f"p̂ ({cfg.estimator}) of {model}, stage {stage or 'all'}:")
    console.print(histogram_text(hist))
    lineage = ledger.lineage(model) if model else []
    recency = lineage_pass_rates(ledger, model, lineage, cfg.ledger) if len(lineage) > 1 or \
        cfg.ledger.recency != "all" else None
    if recency:
        console.print(f"{model}'s lineage (newest first): " + " <- ".join(
            f"{tag} (version -{depth}, step shift {shift})" for tag, shift, depth in lineage))
        console.print(f"p̂ as a trainer reads it at step {recency['now']} (every stage but Guide's hinted, "
                      f"recency {cfg.ledger.recency}): {recency['problems']} problems, "
                      f"{recency['trials']:.1f} trials' worth of evidence")
        console.print(histogram_text(recency["histogram"]))
    weights = ledger_weights(ledger.counts(model=model, stage=stage), cfg.weight_alpha, cfg.weight_beta,
                             cfg.weight_estimator)
    if weights:
        console.print(f"w = p^{cfg.weight_alpha:g} (1-p)^{cfg.weight_beta:g} ({cfg.weight_estimator}): "
                      f"mean {weights['mean']:.4f}, zero on {weights['zero']} of {weights['problems']} problems")
    return {"ledger": str(db), "rows": rows, "model": model, "stage": stage, "histogram": hist,
            "weights": weights, "lineage": lineage, "recency": recency}


def lineage_pass_rates(ledger: Ledger, model: str, lineage: list, lc) -> dict | None:
    """p̂ = c_eff / k_eff of every problem on record for ``model`` and its ancestors, discounted
    under the ledger section's recency as a trainer reads them at ``model``'s last step."""
    tags = [t for t, _, _ in lineage]
    ids = sorted({pid for t in tags for pid in ledger.counts(model=t)})
    now = ledger.max_step(model) or 0
    c, k = ledger.discounted_counts(model, ids, now, lc.recency, lc.half_life, lc.window, lc.forget_by)
    seen = k > 0
    if not seen.any():
        return None
    return {"now": now, "problems": int(seen.sum()), "trials": float(k.sum()),
            "histogram": histogram((c[seen] / k[seen]).tolist())}


def ledger_weights(counts: dict[str, tuple[int, int]], alpha: float, beta: float, estimator: str) -> dict:
    """PACED's Beta-kernel weights of ledger counts ({id: (c, K)}): their mean, how many are 0,
    and the per-problem values; {} for no counts."""
    if not counts:
        return {}
    ids = sorted(counts)
    w = problem_weights([counts[i][0] for i in ids], [counts[i][1] for i in ids], "beta", alpha, beta, estimator)
    return {"estimator": estimator, "alpha": alpha, "beta": beta, "problems": len(ids),
            "mean": float(w.mean()), "zero": int((w == 0).sum()), "by_problem": dict(zip(ids, w.tolist()))}
