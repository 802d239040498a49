"""PACED distillation: pass-rate-weighted token-level KL, in stages (docs/methods.md §1).

    paced distill --config configs/distill/paced_fkl.yaml teacher.path=... student.path=...

Algorithm (one pass of the loop per stage of ``distill.stages``):
    for each stage (loss_type, weighting, max_steps, reestimate_every):
        p̂  <- K student rollouts per problem of data.train, verified, recorded in the ledger
              (passrate.adaptive: rounds until each problem's weight is settled, up to a cap)
        w   <- w(p̂) per problem (uniform | hard_filter | beta: p̂^α (1-p̂)^β), detached
        pool <- problems with w > 0   (zero-weight problems are never forwarded)
        for step in stage:
            batch     <- B problems from the pool (uniformly, or ∝ w with sample_by_weight)
            responses <- teacher-generated (forward KL, AKL) or student-generated (reverse KL, JSD)
            ℓ_i       <- mean over response tokens of loss(p_S, p_T) (full vocabulary, chunked)
            L         <- Σ_i w_i ℓ_i / Σ_i w_i   (or / N)        -> backward, clip, step
                         (+ λ Σ F (θ − θ*)² with regularizer.name=ewc: paced/train/regularizer.py)
            every reestimate_every steps: p̂, w, pool re-estimated from fresh rollouts (or, with
                online_passrate, from the stage-start estimate plus the verified student
                responses the stage has drawn so far: no extra rollouts)
    before and after: held-out target accuracy (data.eval) and forgetting probe (data.forgetting)

Each step's metrics row holds the seconds of its phases beside ``step_time``: time_passrate
(re-estimates, the batch draw, online rows), time_sampling, time_teacher, time_forward,
time_backward, time_optimizer (``train_on``, the step ``benchmarks/distill_step.py`` times too).

Deviations from the paper, each a switch: sampling ∝ w (``sample_by_weight``) then uniform
weights inside the batch, instead of weighting a uniform batch; the unbiased estimator of
p^α(1-p)^β (``weight_estimator: unbiased``); ÷N normalisation (``normalize: count``); p̂ from
the stage's own verified student responses (``online_passrate``: a running sum over a moving
student, at student_temperature). With
``sample_by_weight`` off, batches are drawn uniformly from the non-zero-weight pool, so "equal
compute" means equal numbers of problems actually trained on (docs/methods.md, pilot settings).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import latest_checkpoint, load_checkpoint, resume_or_fresh, save_checkpoint
from ..config import DistillConfig, to_dict
from ..ledger import Ledger, gather_counts, histogram, tally
from ..losses import DEFAULT_RESPONSES, DISTILL_LOSSES, chunked_token_loss, loss_kwargs, masked_mean
from ..models import encode_prompts, logits_head, prompt_room, save_pretrained, stop_token_ids
from ..rollout import SAMPLERS, SamplingParams, sample
from ..rundir import load_model, start_run
from ..runlog import Progress, RunLog, console
from ..tasks import load_sources, verify
from ..tasks.answers import take_undecided
from ..teacher import TeacherHiddenCache, TeacherPromptCache, load_teacher, response_hidden, teacher_hidden
from ..weighting import normalize
from .batches import Packed, pack
from .lineage import Recency, link_parent, read_counts
from .optimization import make_scheduler, optimizer_from, update
from .passrates import PassRater, eval_before, group_labels, held_out_change, held_out_eval, stage_weights
from .regularizer import regularizer_from


def pick_batch(w: np.ndarray, seed: int, step: int, per_device: int, world: int, rank: int, by_weight: bool):
    """This process's slice of one global batch of pool indices from the problems with w > 0,
    and their raw weights: uniform draws weighted by w, or draws ∝ w weighted 1
    (``sample_by_weight``). At least one problem per process, with replacement if fewer are live."""
    live = np.flatnonzero(w > 0)
    rng = np.random.default_rng([seed, step])
    size = max(min(per_device * world, live.size), world)
    short = live.size < world
    if by_weight:
        pick = rng.choice(live, size, replace=short, p=w[live] / w[live].sum())
        raw_w = np.ones(size)
    else:
        pick = rng.choice(live, size, replace=short)
        raw_w = w[pick]
    return pick[rank::world], raw_w[rank::world]


# ---------------------------------------------------------------------------------------------
# Responses: the teacher's (greedy ones cached) or the student's
# ---------------------------------------------------------------------------------------------
@dataclass
class Responder:
    """Who writes a stage's responses, with which prompts and temperatures; the greedy teacher's
    responses are deterministic and kept in ``cache`` by problem id."""
    teacher: torch.nn.Module
    student: torch.nn.Module
    t_prompts: dict
    s_prompts: dict
    stops: list[int]
    pad: int
    eos: int                 # an empty response trains on this one token
    max_tokens: int
    teacher_temperature: float
    student_temperature: float
    seed: int
    backend: str
    cache: dict = field(default_factory=dict)


def responses_for(rs: Responder, ids: list[str], who: str, at: int) -> list[list[int]]:
    """Token ids of one response per problem ``ids``, by ``who`` (teacher | student) at step ``at``."""
    if who == "teacher" and rs.teacher_temperature == 0:  # greedy: deterministic, cached
        todo = [i for i in ids if i not in rs.cache]
        if todo:
            ro = sample(rs.teacher, [rs.t_prompts[i] for i in todo],
                        SamplingParams(temperature=0.0, max_tokens=rs.max_tokens), eos_token_id=rs.stops,
                        pad_token_id=rs.pad)
            for i, row, n in zip(todo, ro.completion_ids.tolist(), ro.lengths.tolist()):
                rs.cache[i] = row[:n]
        return [rs.cache[i] for i in ids]
    model, prompts, temp = ((rs.teacher, rs.t_prompts, rs.teacher_temperature) if who == "teacher"
                            else (rs.student, rs.s_prompts, rs.student_temperature))
    draw = sample if who == "teacher" else SAMPLERS[rs.backend]   # the engine serves the student
    ro = draw(model, [prompts[i] for i in ids], SamplingParams(temperature=temp, max_tokens=rs.max_tokens,
                                                               seed=rs.seed * 1000003 + at),
              eos_token_id=rs.stops, pad_token_id=rs.pad)
    return [row[:n] for row, n in zip(ro.completion_ids.tolist(), ro.lengths.tolist())]


def record_online(ledger: Ledger, tok, by_id: dict, stops: list[int], world: int, tag: str, name: str,
                  ids: list[str], resp: list[list[int]], at: int) -> None:
    """The student's sampled responses of a step, verified, as ledger rows of stage ``name``
    (every student-response stage records them; ``online_passrate`` and ``passrate_source:
    ledger`` read them). A response cut at the length limit counts only with an explicit final
    answer."""
    texts = tok.batch_decode(resp, skip_special_tokens=True)
    done = [bool(r) and r[-1] in stops for r in resp]      # ended at a stop token, not cut
    counts = tally(ids, [verify(t, by_id[i], f) for i, t, f in zip(ids, texts, done)])
    ledger.record(gather_counts(counts, world), model=tag, stage=name, step=at)


# ---------------------------------------------------------------------------------------------
# One step: packed batches, the teacher's hidden states, the weighted loss, the update
# ---------------------------------------------------------------------------------------------
def pack_pair(s_prompts: list, t_prompts: list | None, resp: list[list[int]], pad: int, dev):
    """The student's batch (ids, mask, pos, P) on device, the teacher's (its own prompts when
    privileged, else the same batch), the response mask (B, R) and R."""
    s = pack(s_prompts, resp, pad)
    s_batch = Packed(s.ids.to(dev), s.mask.to(dev), s.pos.to(dev), s.P)
    t_batch = s_batch
    if t_prompts is not None:
        t = pack(t_prompts, resp, pad)
        t_batch = Packed(t.ids.to(dev), t.mask.to(dev), t.pos.to(dev), t.P)
    return s_batch, t_batch, s.mask[:, s.P:].float(), s.ids.shape[1] - s.P


def distill_step(student, h_t, head_t, s_batch, resp_mask, weights, loss_type: str, loss_kw: dict,
                 chunk_size: int):
    """One weighted loss from the teacher's hidden states ``h_t`` (B, R, H), computed first and
    without grad (so their transient memory is gone before the student's activations exist).
    Returns (loss, per-problem losses (B,), token agreement)."""
    R = resp_mask.shape[1]
    h_s = response_hidden(student, *s_batch, R)                              # (B, R, H)
    head_s = logits_head(student)
    per_token, agree = chunked_token_loss(h_s, h_t, head_s, head_t, DISTILL_LOSSES[loss_type],
                                          chunk_size=chunk_size, with_agreement=True, **loss_kw)  # (B, R) x 2
    per_problem = masked_mean(per_token, resp_mask)                          # (B,)
    loss = (weights * per_problem).sum()
    agreement = float((agree * resp_mask).sum() / resp_mask.sum().clamp(min=1))
    return loss, per_problem.detach(), agreement


@dataclass
class Learner:
    """The student's side of a step: the model (DDP-wrapped under several processes), what
    updates it, the loss's chunk size, and the EWC penalty λ Σ F (θ − θ*)² (0-dim), if any."""
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    max_grad_norm: float
    chunk_size: int
    penalty: Callable[[], torch.Tensor] | None = None
    run_dir: Path | None = None              # named (its last checkpoint) when a loss is not finite


def train_on(rs: Responder, ln: Learner, head_t, cache, ids: list[str], who: str, at: int, factors: torch.Tensor,
             loss_type: str, loss_kw: dict) -> tuple[list[list[int]], dict]:
    """One optimizer step on problems ``ids`` at global step ``at``, once the batch is drawn:
    ``who``'s responses, the teacher's hidden states on them (``cache``; None: a full teacher
    forward), L = Σ_i factors_i ℓ_i (+ penalty), backward, clip, step. Returns the responses as
    sampled (an empty one stays empty) and the step's metrics with the seconds of its phases:
    time_sampling (responses), time_teacher (packing + teacher), time_forward (student + loss),
    time_backward, time_optimizer (clip, step, schedule)."""
    t0 = time.perf_counter()
    resp = responses_for(rs, ids, who, at)
    t1 = time.perf_counter()
    filled, dev = [r if r else [rs.eos] for r in resp], ln.accelerator.device
    s_batch, t_batch, resp_mask, R = pack_pair([rs.s_prompts[i] for i in ids], None if rs.t_prompts is rs.s_prompts
                                               else [rs.t_prompts[i] for i in ids], filled, rs.pad, dev)
    h_t = cache(rs.teacher, ids, [rs.t_prompts[i] for i in ids], filled, t_batch, R) if cache is not None \
        else teacher_hidden(rs.teacher, *t_batch, R)                                       # (B, R, H)
    t2 = time.perf_counter()
    ln.model.train()
    loss, per_problem, agreement = distill_step(ln.model, h_t, head_t, s_batch, resp_mask.to(dev), factors,
                                                loss_type, loss_kw, ln.chunk_size)
    penalty = ln.penalty() if ln.penalty is not None else None
    total = loss if penalty is None else loss + penalty
    if not math.isfinite(total.item()):
        raise FloatingPointError(f"distill: loss is {total.item()} at step {at + 1}; nothing was updated"
                                 + (f"; the last good checkpoint is {latest_checkpoint(ln.run_dir)}"
                                    if ln.run_dir is not None else ""))
    t3 = time.perf_counter()
    ln.accelerator.backward(total)
    t4 = time.perf_counter()
    grad_norm, lr = update(ln.accelerator, ln.model, ln.optimizer, ln.scheduler, ln.max_grad_norm)
    t5 = time.perf_counter()
    m = {"loss": loss.item(), "kl": float(per_problem.mean()), "lr": lr, "grad_norm": float(grad_norm),
         "agreement": agreement, "response_tokens": int(resp_mask.sum())}
    if penalty is not None:
        m["ewc_penalty"] = penalty.item()
    return resp, m | {"time_sampling": t1 - t0, "time_teacher": t2 - t1, "time_forward": t3 - t2,
                      "time_backward": t4 - t3, "time_optimizer": t5 - t4}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train(cfg: DistillConfig, resume: bool = False) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main, world, rank, dev = (accelerator.is_main_process, accelerator.num_processes, accelerator.process_index,
                              accelerator.device)
    run_dir = start_run(cfg, save=main, resume=resume)
    d, smp = cfg.distill, cfg.sampling
    student, tok, teacher = load_pair(cfg, run_dir, accelerator)
    pool = load_sources(cfg.data.train, "data.train")
    by_id = {e.id: e for e in pool}
    held_out = {"target": load_sources(cfg.data.eval, "data.eval"),
                "forgetting": load_sources(cfg.data.forgetting, "data.forgetting")}
    system, long = cfg.student.system_prompt, cfg.student.long_prompts
    room = prompt_room(smp.max_completion_length, student, teacher)
    s_prompts = pool_prompts(tok, pool, system, room, long)
    t_prompts = pool_prompts(tok, pool, system, room, long, cfg.teacher.privileged_template) \
        if cfg.teacher.privileged else s_prompts
    stops = stop_token_ids(student, tok)
    total_steps = sum(s.max_steps for s in d.stages)
    optimizer = optimizer_from(student.parameters(), cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim.lr_scheduler_type, cfg.optim.warmup_steps, total_steps)
    student, optimizer = accelerator.prepare(student, optimizer)
    raw = accelerator.unwrap_model(student)
    ewc = regularizer_from(cfg.regularizer, raw, tok, run_dir, resume, save=main)   # before a checkpoint loads
    # Under DDP every process estimates p̂ identically (same seeds); only the main one records
    # into the shared ledger, the others into a private file.
    ledger = Ledger(cfg.ledger.path or run_dir / "ledger.sqlite") if main else \
        Ledger(run_dir / f".ledger-rank{rank}.sqlite")
    tag = cfg.ledger.model or f"{run_dir.resolve()}:student"
    if parents := link_parent(ledger, tag, cfg.ledger.parent, cfg.student.path) if main else []:
        console.print(f"p̂ may also come from {', '.join(parents)} (ledger.parent)")
    rec, pool_ids = Recency.of(cfg.ledger), [e.id for e in pool]
    ckpt, state = resume_or_fresh(run_dir, resume, lambda c: load_checkpoint(c, raw, optimizer, scheduler))
    step = state["step"] if ckpt is not None else 0
    if ckpt is not None:
        console.print(f"resumed from {ckpt} at step {step}")
    log = RunLog(run_dir, cfg.run.report_to, cfg.run.logging_steps, resume_step=step if ckpt else None,
                 enabled=main, config=to_dict(cfg))

    pc = cfg.passrate
    pr = PassRater(raw, tok, pc.num_generations, smp.temperature, smp.top_p, smp.top_k,
                   smp.max_completion_length, cfg.run.seed, smp.batch_size, system, cfg.engine.backend, long,
                   pc.adaptive, pc.round_size, pc.max_generations, pc.weight_tol, pc.zero_tol)
    before = eval_before(pr, held_out, d.eval_n, run_dir, ckpt is not None, main)
    rs = Responder(teacher, raw, t_prompts, s_prompts, stops, tok.pad_token_id, tok.eos_token_id,
                   smp.max_completion_length, d.teacher_temperature, d.student_temperature, cfg.run.seed,
                   cfg.engine.backend)
    ln = Learner(accelerator, student, optimizer, scheduler, cfg.optim.max_grad_norm, d.chunk_size,
                 None if ewc is None else lambda: ewc.penalty(raw), run_dir)
    # a resumed run redoes the steps past its checkpoint: their online rows go (a fresh run: all)
    for i, st in enumerate(d.stages):
        ledger.forget_from(tag, f"{i}:{st.name}:online", step + 1 if ckpt is not None else 0)
    # What the frozen teacher computes on repeated inputs (paced/teacher.py): hidden states on
    # greedy teacher responses (off-policy), prompt KV caches (otherwise).
    hidden_cache = TeacherHiddenCache(d.teacher_cache_mib * 2 ** 20)
    prompt_cache = TeacherPromptCache(d.teacher_cache_mib * 2 ** 20)
    head_t = logits_head(teacher)                             # the frozen teacher's logits head

    bar = Progress(total_steps, "distill", cfg.run.progress and main, initial=step)
    stage_start = 0
    for stage_i, stage in enumerate(d.stages):
        stage_end, name = stage_start + stage.max_steps, f"{stage_i}:{stage.name}"
        if step >= stage_end:
            stage_start = stage_end
            continue
        who = DEFAULT_RESPONSES[stage.loss_type] if stage.responses == "auto" else stage.responses
        kw = loss_kwargs(stage.loss_type, stage.temperature, stage.beta, stage.akl_mu)
        every = stage.reestimate_every or stage.max_steps
        est_at = stage_start + ((step - stage_start) // every) * every  # the estimate in force
        weigh = (stage.weighting, stage.weight_alpha, stage.weight_beta, stage.weight_estimator, stage.online_passrate)
        known = partial(read_counts, accelerator, ledger, tag, pool_ids, rec=rec) \
            if stage.passrate_source == "ledger" else None   # p̂ from the rows on record, not fresh rollouts
        groups = group_labels(pool, stage.shrink_by)   # shrunk's prior: one per group
        p_hat, w = stage_weights(pr, ledger, tag, name, pool, *weigh, est_at, stage_start, known, groups)
        console.print(f"stage {stage_i} '{stage.name}': {stage.loss_type} on {who} responses, "
                      f"weighting {stage.weighting}; {int((w > 0).sum())}/{len(pool)} problems "
                      f"with w > 0 (p̂ = 0: {int((p_hat == 0).sum())}, p̂ = 1: {int((p_hat == 1).sum())})")
        cache = None if d.teacher_cache_mib == 0 else \
            hidden_cache if who == "teacher" and d.teacher_temperature == 0 else prompt_cache
        while step < stage_end:
            t_step = time.perf_counter()
            if step > est_at and (step - stage_start) % every == 0:
                est_at = step
                p_hat, w = stage_weights(pr, ledger, tag, name, pool, *weigh, est_at, stage_start, known, groups)
            if not (w > 0).any():
                raise ValueError(f"stage {stage.name!r}: every problem has weight 0 at step {step} "
                                 f"(p̂ all 0 or 1 under {stage.weighting}); nothing to train on. "
                                 f"The last checkpoint is {latest_checkpoint(run_dir)}")
            pick, raw_w = pick_batch(w, cfg.run.seed, step, d.per_device_train_batch_size, world, rank,
                                     stage.sample_by_weight)
            ids, t_passrate = [pool[i].id for i in pick], time.perf_counter() - t_step
            factors = torch.as_tensor(normalize(raw_w, stage.normalize), dtype=torch.float32, device=dev)
            resp, m = train_on(rs, ln, head_t, cache, ids, who, step, factors, stage.loss_type, kw)
            t_online = time.perf_counter()
            if who == "student" and d.student_temperature > 0:  # drawn anyway, verified: p̂ rows for later
                record_online(ledger, tok, by_id, stops, world, tag, f"{name}:online", ids, resp, step + 1)
            step += 1
            row = {"stage": stage.name, **m, "mean_weight": float(raw_w.mean()),
                   "zero_weight_share": float((w == 0).mean()),
                   "time_passrate": t_passrate + time.perf_counter() - t_online,
                   "step_time": time.perf_counter() - t_step}
            row["tokens_per_s"] = row["response_tokens"] * world / max(row["step_time"], 1e-9)
            row["undecided"] = take_undecided()   # verdicts math-verify timed out on (counted wrong)
            if step - 1 == est_at and stage.weighting != "uniform":
                row["p_hat_histogram"] = histogram(p_hat)["counts"]
                row["mean_p_hat"] = float(p_hat.mean())
            log.log(step, row, console_keys=("loss", "kl", "mean_weight", "zero_weight_share", "agreement"))
            bar.update()
            if cfg.run.save_steps and step % cfg.run.save_steps == 0 and step < total_steps:
                _save(accelerator, run_dir, step, student, tok, optimizer, scheduler, cfg.run.save_total_limit)
        stage_start = stage_end
    bar.close()
    _save(accelerator, run_dir, step, student, tok, optimizer, scheduler, cfg.run.save_total_limit)
    after = held_out_eval(pr, held_out, d.eval_n, "after")
    summary = {"command": "distill", "steps": step, "before": before, "after": after,
               **held_out_change(before, after), "model_dir": str(run_dir / "model")}
    weights = accelerator.get_state_dict(student)   # on every process: under FSDP it gathers the shards
    if main:
        save_pretrained(raw, tok, run_dir / "model", state_dict=weights)
    log.summary(summary)
    log.close()
    return summary


def pool_prompts(tok, pool: list, system: str, room: int, long: str, template: str | None = None) -> dict:
    """problem id -> its prompt's token ids (``template``: the privileged teacher's, with the answer)."""
    ids = [e.id for e in pool]
    texts = [e.prompt if template is None else template.format(prompt=e.prompt, answer=e.answer) for e in pool]
    return dict(zip(ids, encode_prompts(tok, texts, system, room, long, ids)))


def load_pair(cfg, run_dir, accelerator):
    """The student (built or loaded), its tokenizer, and the frozen teacher on the device
    (``teacher.path: self``: a frozen copy of the starting student); vocabularies and logits
    heads checked."""
    with accelerator.main_process_first():
        student, tok, _ = load_model(cfg.student.path, cfg.student.preset, cfg.student.init_seed, cfg.student.dtype,
                                     run_dir, cfg.student.gradient_checkpointing)
    teacher = load_teacher(cfg.teacher.path, cfg.teacher.dtype, student, tok).to(accelerator.device)
    return student, tok, teacher


def _save(accelerator, run_dir, step, student, tok, optimizer, scheduler, keep) -> None:
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(student)   # on every process: under FSDP it gathers the shards
    if accelerator.is_main_process:
        save_checkpoint(run_dir, step, accelerator.unwrap_model(student), tok, optimizer, scheduler,
                        {}, model_state_dict=weights, keep=keep)
