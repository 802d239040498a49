"""RL with verifiable rewards: GRPO, PPO and the NSR family in one loop (docs/methods.md §2).

    paced rl --config configs/rl/w_reinforce.yaml policy.path=... data.train=...
    accelerate launch -m paced.cli rl --config ...          # the same code on many processes

Algorithm (one pass per step; the math is paced/rl_losses.py; the loop calls its named steps
``collect`` (paced/train/frontier.py, over paced/train/rollouts.py), ``pack_batch`` and
``targets_for`` (paced/train/rl_batch.py), ``optimise`` over ``policy_loss``, ``step_row``):
    prompts   <- the next prompts of a seeded per-epoch permutation of data.train, or as
                 prompt_selection says (∝ w(p̂); skip, allocate, adaptive: frontier.py), p̂ from
                 the ledger (this run's rollouts and its parents', under ledger.recency)
    rollouts  <- num_generations completions per prompt (the shared sampler), old log-probs
                 (allocate, adaptive: groups of unequal size)
    rewards   <- reward_funcs (the task verifiers by default); successes -> the ledger
    guide:    a group whose num_generations rollouts all fail and whose prompt has a hint is
                 replaced by num_generations rollouts from the hinted prompt (rl.guide.hint_template),
                 scored and trained as completions of the plain prompt (paced/guide.py)
    dynamic_sampling: drop groups whose rewards are all exactly equal, sample more prompts
                 until the batch is full or max_sampling_rounds is spent
    A, keep   <- ADVANTAGES[advantage](rewards)  (grpo | psr | nsr | w_reinforce), per row;
                 ppo: A_t <- GAE(terminal reward, V_t of the critic), per token
    repeat num_iterations times:
        for each micro-batch: ρ_t = π_θ(o_t|q,o_<t) / π_old(o_t|q,o_<t)
            ℓ_t = −min(ρ_t A, clip(ρ_t, 1−ε, 1+ε_high) A) [+ β k3(π_θ, π_ref)] [− c_H H_t]
            guide, hinted rows: ℓ_t = −r̃_t A, r_t = π_θ(o_t|q,o_<t) / π_old(o_t|q,h,o_<t), no clip
            L   = LOSS_TYPES[loss_type](ℓ, mask · keep)   [+ vf_coef · clipped value loss]
                  [+ λ Σ F (θ − θ*)² once per optimizer step, regularizer.name=ewc]
            backward
        clip grad norm, optimizer step, scheduler step
    log, evaluate every eval_steps, checkpoint every save_steps; stop at max_steps or max_rollouts

Deviations / choices: one ``step`` is one rollout batch (num_iterations optimizer steps on it);
with num_iterations = 1 the ratio uses the detached current log-probs (ρ = 1, as TRL); with more
it uses the sampler's log-probs (same weights and temperature, no extra forward; TRL recomputes
them) — with engine.backend vllm the trainer's own, recomputed once per step (another engine's
numbers must not enter the ratio). Every step logs engine/logprob_diff_max and _mean, |engine −
trainer| over the plain rows' completion tokens (this process's), and time_weight_sync;
rl.vllm_importance_sampling_correction multiplies each token's surrogate by the detached
min(π_old / π_engine, cap) (TRL's truncated IS; before the KL and entropy terms, as TRL). The PPO critic is a copy of the policy's backbone with a zero-initialised scalar head,
trained by the same optimizer (TRL uses a reward model's backbone; we have none). Guide: "fail"
is the verifier's verdict (whatever reward_funcs say); hinted rollouts are recorded in the ledger
under stage "<ledger.stage>:hinted", so p̂ stays the plain prompt's pass rate; hinted old
log-probs are always the sampler's (π_old(o|q,h) needs the hinted prompt, which the training
forward does not see). Every run logs ``all_fail_prompts`` (prompts whose rollouts all failed
once) and ``all_fail_now_solved`` (of those, the ones whose latest plain rollouts solved them),
and what its rollouts bought: ``rollout_tokens``, ``rollouts_zero_variance`` (in groups whose
rewards all agree) and ``informative_group_share``.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import latest_checkpoint, load_checkpoint, resume_or_fresh, save_checkpoint
from ..config import RLConfig, to_dict
from ..evaluate import evaluate
from ..guide import guided_surrogate
from ..ledger import HINTED, Ledger
from ..models import check_logits_head, encode_prompts, prompt_room, save_pretrained, stop_token_ids, \
    train_mode_without_dropout
from ..rewards import REWARDS, load_reward_function
from ..rl_losses import LOSS_TYPES, clipped_surrogate, engine_terms, kl_k3, value_loss
from ..rollout import SamplingParams, sync_weights
from ..rundir import load_model, start_run
from ..runlog import Progress, RunLog, console
from ..tasks import load_sources
from ..tasks.answers import take_undecided
from .critic import ValueModel
from .frontier import SelectSpec, collect, reads_counts
from .lineage import Recency, link_parent, read_counts
from .logprobs import completion_logprobs
from .optimization import make_scheduler, optimizer_from, update
from .regularizer import regularizer_from
from .rl_batch import Batch, Targets, pack_batch, targets_for
from .rollouts import Collected, Roller, encode_hints


# ---------------------------------------------------------------------------------------------
# The update: the loss of one micro-batch, the optimizer steps of one batch, the step's metrics
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSpec:
    """The numbers of ``rl.*`` the loss of a micro-batch reads (``LossSpec.of(cfg.rl)``)."""
    temperature: float
    num_iterations: int
    loss_type: str
    epsilon: float
    epsilon_high: float
    beta: float
    entropy_coef: float
    vf_coef: float
    cliprange_value: float
    guide: bool
    guide_shaping: str
    guide_quantile: float
    guide_gamma: float
    guide_power: float
    is_correction: bool
    is_cap: float

    @classmethod
    def of(cls, r, temperature: float) -> LossSpec:
        g = r.guide
        return cls(temperature, r.num_iterations, r.loss_type, r.epsilon, r.epsilon_high, r.beta, r.entropy_coef,
                   r.ppo.vf_coef, r.ppo.cliprange_value, g.enabled, g.shaping, g.quantile, g.gamma, g.power,
                   r.vllm_importance_sampling_correction, r.vllm_importance_sampling_cap)


def policy_loss(policy, critic, b, rows: list[int], t: Targets, s: LossSpec, first_pass: bool):
    """The loss of one micro-batch ``b`` = (ids, mask, pos, P, R) holding batch rows ``rows`` (a
    share of the batch loss: summed over micro-batches it is the loss of the whole batch) and its
    statistics. Guide's hinted rows: π_old is always the sampler's (under the hinted prompt), the
    ratio unclipped and shaped (``guided_surrogate``). ``t.engine_logp``: the rollout engine's
    log-probs, compared with the trainer's and, with ``is_correction``, the truncated IS weight's
    denominator (``engine_terms``)."""
    ids, mask, pos, P, R = b
    cmask = mask[:, P:].float()                                              # (b, R)
    kept = cmask * t.keep[rows].to(cmask)[:, None]                           # (b, R) dropped rows: 0
    entropy = "grad" if s.entropy_coef > 0 else ("value" if first_pass else "none")
    logp, ent = completion_logprobs(policy, ids, mask, pos, P, R, s.temperature, entropy)
    old = logp.detach() if s.num_iterations == 1 else t.old_logp[rows, :R].to(logp)
    a = t.adv[rows][:, :R] if t.adv.dim() == 2 else t.adv[rows][:, None]     # (b, R) or (b, 1)
    st = {}
    if s.guide:
        h = t.hinted[rows].to(logp.device)                                   # (b,)
        old = torch.where(h[:, None], t.old_logp[rows, :R].to(logp), old)
        per_token, clipped, g = guided_surrogate(logp, old, a.to(logp), h, kept, s.guide_shaping, s.guide_quantile,
                                                 s.guide_gamma, s.guide_power, s.epsilon, s.epsilon_high)
        if g["hinted_tokens"]:
            st.update({f"guide/{k}": g[k] for k in ("log_ratio", "shaped_ratio")})
            if math.isfinite(g["gamma"]):
                st["guide/gamma"] = g["gamma"]
    else:
        per_token, clipped = clipped_surrogate(logp, old, a.to(logp), s.epsilon, s.epsilon_high)   # (b, R)
    plain = cmask * (~t.hinted[rows]).to(cmask)[:, None]        # hinted rows were sampled under another prompt
    eng = t.engine_logp[rows, :R].to(logp)
    if s.is_correction:                           # π_old (the trainer's) / π_engine, truncated
        per_token = per_token * engine_terms(old, eng, plain, s.is_cap)[0]
    if first_pass:                                # before any update: the trainer's π_old
        st.update(engine_terms(logp, eng, plain, s.is_cap)[1])
    st["clip_ratio"] = float((clipped.float() * kept).sum() / kept.sum().clamp(min=1))
    if t.ref_logp is not None:
        kl = kl_k3(logp, t.ref_logp[rows, :R].to(logp))                     # (b, R)
        per_token = per_token + s.beta * kl
        st["kl"] = float((kl.detach() * kept).sum() / kept.sum().clamp(min=1))
    if ent is not None:
        if s.entropy_coef > 0:
            per_token = per_token - s.entropy_coef * ent
        st["entropy"] = float((ent.detach() * cmask).sum() / cmask.sum().clamp(min=1))
    loss = LOSS_TYPES[s.loss_type](per_token, kept, **t.norm)
    if critic is not None:
        v = critic(ids, mask, pos, P, R)                                     # (b, R)
        vl = value_loss(v, t.values[rows, :R].to(v), t.returns[rows, :R].to(v), cmask, s.cliprange_value)
        vloss = LOSS_TYPES[s.loss_type](vl, kept, **t.norm)
        st["value_loss"] = vloss.item()
        loss = loss + s.vf_coef * vloss
    return loss, st


def optimise(accelerator, policy, critic, trainable, optimizer, scheduler, batch: Batch, t: Targets, s: LossSpec,
             ewc, max_grad_norm: float, world: int, step: int, run_dir):
    """``num_iterations`` passes over the batch, gradients accumulated over its micro-batches and
    one optimizer step per pass; the EWC penalty once per optimizer step. A non-finite loss stops
    the run before it reaches the weights. Returns (stats, grad norm, lr); stats carries the
    phase times time_forward (losses, penalty included), time_backward and time_optimizer (clip,
    optimizer and scheduler steps), summed over passes."""
    raw = accelerator.unwrap_model(policy)
    stats = {"loss": 0.0, "value_loss": 0.0, "time_forward": 0.0, "time_backward": 0.0, "time_optimizer": 0.0}
    grad_norm, lr = torch.tensor(float("nan")), scheduler.get_last_lr()[0]
    for it in range(s.num_iterations if batch.N else 0):
        for m, (rows, b) in enumerate(zip(batch.micro, batch.packed)):
            sync = m == len(batch.micro) - 1
            with accelerator.no_sync(policy) if not sync else contextlib.nullcontext():
                t_fwd = time.perf_counter()
                loss, st = policy_loss(policy, critic, b, rows, t, s, first_pass=(it == 0))
                loss = loss * world  # DDP averages gradients over processes; the normalisers are global
                if ewc is not None and sync:  # λ Σ F (θ − θ*)², once per optimizer step
                    penalty = ewc.penalty(raw)
                    stats["ewc_penalty"] = penalty.item()
                    loss = loss + penalty
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"rl: loss is {loss.item()} at step {step + 1}; nothing was updated; "
                                             f"the last good checkpoint is {latest_checkpoint(run_dir)}")
                t_bwd = time.perf_counter()
                accelerator.backward(loss)
                stats["time_forward"] += t_bwd - t_fwd
                stats["time_backward"] += time.perf_counter() - t_bwd
            stats["loss"] += loss.item() / world
            stats["value_loss"] += st.pop("value_loss", 0.0)
            for key, v in st.items():
                stats.setdefault(key, []).append(v)
        t_opt = time.perf_counter()
        grad_norm, lr = update(accelerator, trainable, optimizer, scheduler, max_grad_norm)
        stats["time_optimizer"] += time.perf_counter() - t_opt
    return stats, grad_norm, lr


def step_row(c: Collected, batch: Batch, t: Targets, stats: dict, grad_norm, lr: float, iters: int,
             rollouts_total: int, once_failed: dict, guide: bool) -> dict:
    """The metrics of one step (timings are added by the loop)."""
    N, groups = batch.N, c.groups
    row = {"reward": float(batch.rewards.mean()) if N else float("nan"),
           "accuracy": float(np.mean([x for g in groups for x in g["correct"]])) if N else float("nan"),
           "frac_reward_zero_std": float(np.mean(c.zero_std)) if c.zero_std else float("nan"),
           "groups": len(groups), "prompts_sampled": c.sampled, "sampling_rounds": c.rounds,
           "rollouts": c.rollouts, "rollouts_total": rollouts_total, "rollout_tokens": c.tokens,
           "rollouts_zero_variance": c.rollouts_zero_variance,
           "informative_group_share": c.informative / c.rolled if c.rolled else float("nan"), **c.metrics,
           "all_fail_prompts": len(once_failed), "all_fail_now_solved": sum(once_failed.values()),
           "kept_rows": int(t.keep.sum()), "completion_length": float(batch.lengths.mean()) if N else 0.0,
           "loss": stats["loss"] / max(iters, 1), "grad_norm": float(grad_norm), "lr": lr,
           "advantage_mean": float(t.adv.float().mean()) if N else 0.0}
    for key in ("clip_ratio", "kl", "entropy", "guide/gamma", "guide/log_ratio", "guide/shaped_ratio"):
        if stats.get(key):
            row[key] = float(np.mean(stats[key]))
    if stats.get("engine/logprob_tokens"):   # |engine − trainer| log-prob over completion tokens
        row["engine/logprob_diff_max"] = max(stats["engine/logprob_diff_max"])
        row["engine/logprob_diff_mean"] = sum(stats["engine/logprob_diff_sum"]) / max(
            sum(stats["engine/logprob_tokens"]), 1.0)
    if guide:
        row.update({"guide/guided_groups": c.guided, "guide/solved_with_hint": c.guided_solved / c.guided
                    if c.guided else float("nan"), "guide/hinted_groups_kept": sum(g["hinted"] for g in groups)})
    if "ewc_penalty" in stats:
        row["ewc_penalty"] = stats["ewc_penalty"]
    row.update({k: stats[k] for k in ("time_forward", "time_backward", "time_optimizer")})
    return row


class _Params:
    """What ``update`` needs of a model (its parameters): policy and critic clipped together."""

    def __init__(self, params):
        self._params = params

    def parameters(self):
        return iter(self._params)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train(cfg: RLConfig, resume: bool = False) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    r, smp, G = cfg.rl, cfg.sampling, cfg.rl.num_generations
    funcs = [REWARDS[s] if s in REWARDS else load_reward_function(s) for s in r.reward_funcs]  # before any model
    run_dir = start_run(cfg, save=main, resume=resume)
    pool, held_out = load_sources(cfg.data.train, "data.train"), load_sources(cfg.data.eval, "data.eval")
    with accelerator.main_process_first():
        policy, tok, policy_path = load_model(cfg.policy.path, cfg.policy.preset, cfg.policy.init_seed,
                                              cfg.policy.dtype, run_dir, cfg.policy.gradient_checkpointing)
    check_logits_head(policy, "policy")
    if cfg.policy.gradient_checkpointing:  # HF checkpoints in train mode only; keep eval's numbers
        train_mode_without_dropout(policy)
    system, long = cfg.policy.system_prompt, cfg.policy.long_prompts
    room = prompt_room(smp.max_completion_length, policy)
    prompt_ids = encode_prompts(tok, [e.prompt for e in pool], system, room, long, [e.id for e in pool])
    hint_ids = encode_hints(tok, pool, r.guide.hint_template, system, room, long, main) if r.guide.enabled else None
    ref = copy.deepcopy(policy).eval().requires_grad_(False) if r.beta > 0 else None
    critic = ValueModel(policy) if r.advantage == "ppo" else None
    optimizer = optimizer_from([{"params": list(m.parameters())} for m in (policy, critic) if m is not None],
                               cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim.lr_scheduler_type, cfg.optim.warmup_steps,
                               r.max_steps * r.num_iterations)
    policy, *rest = accelerator.prepare(policy, *([critic] if critic is not None else []), optimizer)
    critic, optimizer = (rest[0], rest[1]) if critic is not None else (None, rest[0])
    raw, dev = accelerator.unwrap_model(policy), accelerator.device
    ewc = regularizer_from(cfg.regularizer, raw, tok, run_dir, resume, save=main)   # before a checkpoint loads
    if ref is not None:
        ref.to(dev)
    ledger = Ledger(cfg.ledger.path or run_dir / "ledger.sqlite") if main else \
        Ledger(run_dir / f".ledger-rank{rank}.sqlite")
    tag, stage = cfg.ledger.model or f"{run_dir.resolve()}:policy", cfg.ledger.stage
    hint_stage = f"{stage}{HINTED}"   # guide's hinted rollouts: p̂ (the stage) stays plain
    parents = link_parent(ledger, tag, cfg.ledger.parent, policy_path) if main else []
    rec, pool_ids = Recency.of(cfg.ledger), [e.id for e in pool]
    ckpt, state = resume_or_fresh(run_dir, resume, lambda c: load_checkpoint(c, raw, optimizer, scheduler))
    step, prompts_seen, rollouts_total, once_failed = restore(ckpt, state, critic, accelerator, ledger, tag,
                                                              (stage, hint_stage))
    log = RunLog(run_dir, cfg.run.report_to, cfg.run.logging_steps, resume_step=step if ckpt else None,
                 enabled=main, config=to_dict(cfg))
    ro = Roller(raw, tok, funcs, r.reward_weights or None,
                SamplingParams(n=G, temperature=smp.temperature, top_p=smp.top_p, top_k=smp.top_k,
                               max_tokens=smp.max_completion_length), smp.batch_size,
                stop_token_ids(policy, tok), cfg.engine.backend, pool, prompt_ids, hint_ids)
    spec = LossSpec.of(r, smp.temperature)
    adv_kw = {"grpo": {"scale_rewards": r.scale_rewards}, "w_reinforce": {"lam": r.w_reinforce_lambda}}.get(r.advantage, {})
    trainable = _Params([p for m in (policy, critic) if m is not None for p in m.parameters()])
    local = r.per_device_train_batch_size * r.gradient_accumulation_steps // G
    sel = SelectSpec.of(r, local)
    if main:
        console.print(f"rl ({r.advantage}, loss_type {r.loss_type}): {len(pool)} prompts, "
                      f"{local * world} prompts x {G} completions per step ({sel.rule}), {r.max_steps} steps"
                      + (f"; p̂ also from {', '.join(parents)}" if parents else ""))

    def held_out_eval() -> dict:
        if not held_out:
            return {}
        res = evaluate(raw, tok, held_out, r.eval_n, [1, r.eval_n], temperature=smp.temperature,
                       max_tokens=smp.max_completion_length, greedy=True, seed=cfg.run.seed,
                       backend=cfg.engine.backend, system_prompt=system, long_prompts=long)["overall"]
        return {f"eval/{k}": v for k, v in res.items() if k != "problems"}

    def checkpoint(at: int) -> None:
        accelerator.wait_for_everyone()
        weights = accelerator.get_state_dict(policy)   # on every process: under FSDP it gathers the shards
        if main:
            extra = {"critic": accelerator.unwrap_model(critic).state_dict()} if critic is not None else None
            save_checkpoint(run_dir, at, raw, tok, optimizer, scheduler,
                            {"prompts_seen": prompts_seen, "policy_path": policy_path,
                             "rollouts_total": rollouts_total, "once_failed": once_failed},
                            model_state_dict=weights, keep=cfg.run.save_total_limit, extra_tensors=extra)

    before = held_out_eval() if step == 0 else {}
    if before and main:
        console.print("before: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items() if v is not None))
    bar = Progress(r.max_steps, "rl", cfg.run.progress and main, initial=step)
    while step < r.max_steps and not (r.max_rollouts and rollouts_total >= r.max_rollouts):
        t0 = time.perf_counter()
        t_sync = sync_weights(raw, cfg.engine.backend)   # the engine serves the current policy
        counts = read_counts(accelerator, ledger, tag, pool_ids, step, rec) if reads_counts(sel.rule) else None
        c, prompts_seen = collect(ro, sel, counts, step, prompts_seen, world, rank, cfg.run.seed, accelerator, ledger,
                                  tag, stage, hint_stage if r.guide.enabled else None, once_failed)
        t_rollout = time.perf_counter() - t0
        batch = pack_batch(c.groups, r.per_device_train_batch_size, tok.pad_token_id, dev)
        rollouts_total += int(accelerator.reduce(torch.tensor(c.rollouts, device=dev), "sum"))
        t = targets_for(accelerator, raw, ref, critic, batch, r.advantage, adv_kw,
                        r.advantage == "grpo" and r.scale_rewards == "batch" and world > 1, r.ppo.gamma, r.ppo.lam,
                        r.ppo.whiten_advantages, smp.temperature, cfg.engine.backend != "hf" and r.num_iterations > 1,
                        smp.max_completion_length)
        t1 = time.perf_counter()
        stats, grad_norm, lr = optimise(accelerator, policy, critic, trainable, optimizer, scheduler, batch, t, spec,
                                        ewc, cfg.optim.max_grad_norm, world, step, run_dir)
        t_update = time.perf_counter() - t1
        step += 1
        row = step_row(c, batch, t, stats, grad_norm, lr, r.num_iterations, rollouts_total, once_failed,
                       r.guide.enabled)
        row.update({"time_rollout": t_rollout, "time_sampling": c.t_sample, "time_reward": c.t_reward,
                    "time_update": t_update, "time_weight_sync": t_sync, "step_time": time.perf_counter() - t0})
        # generated tokens per second of the whole step (rollouts + update), all processes
        row["tokens_per_s"] = float(batch.lengths.sum()) * world / max(row["step_time"], 1e-9) if batch.N else 0.0
        row["undecided"] = take_undecided()   # verdicts math-verify timed out on (counted wrong)
        if critic is not None:
            row["value_loss"] = stats["value_loss"] / max(r.num_iterations, 1)
        if r.eval_steps and step % r.eval_steps == 0 and step < r.max_steps:
            row.update(held_out_eval())
        log.log(step, row, console_keys=("reward", "accuracy", "frac_reward_zero_std", "loss", "entropy"))
        bar.update()
        if cfg.run.save_steps and step % cfg.run.save_steps == 0 and step < r.max_steps:
            checkpoint(step)
    bar.close()
    checkpoint(step)
    after = held_out_eval()
    weights = accelerator.get_state_dict(policy)
    if main:
        save_pretrained(raw, tok, run_dir / "model", state_dict=weights)
        if after:
            console.print("after: " + ", ".join(f"{k} {v:.3f}" for k, v in after.items() if v is not None))
    summary = {"command": "rl", "steps": step, "advantage": r.advantage, "loss_type": r.loss_type,
               "before": before, "after": after, "model_dir": str(run_dir / "model")}
    log.summary(summary)
    log.close()
    return summary


def restore(ckpt, state, critic, accelerator, ledger: Ledger, tag: str, stages: tuple[str, ...]):
    """(step, prompts_seen, rollouts_total, once_failed) of a resumed run (its critic loaded, the
    ledger rows a killed run wrote past its checkpoint dropped), or of a fresh one (which replaces
    an earlier run's ledger rows in this directory)."""
    if ckpt is None:
        dropped = [ledger.forget_from(tag, s, 0) for s in stages]
        if sum(dropped):
            console.print(f"[yellow]{dropped[0]} ledger rows of an earlier run ({tag}, {stages[0]}) dropped[/]")
        return 0, 0, 0, {}
    step = state["step"]
    if critic is not None:
        from safetensors.torch import load_file
        accelerator.unwrap_model(critic).load_state_dict(load_file(ckpt / "critic.safetensors"))
    dropped = [ledger.forget_from(tag, s, step + 1) for s in stages]
    console.print(f"resumed from {ckpt} at step {step} ({dropped[0]} ledger rows past it dropped)")
    return step, state["prompts_seen"], state.get("rollouts_total", 0), state.get("once_failed", {})
