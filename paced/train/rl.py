"""RL with verifiable rewards: GRPO, PPO and the NSR family in one loop (ALGORITHMS.md §2).

    paced rl --config configs/rl/w_reinforce.yaml policy.path=... data.train=...
    accelerate launch -m paced.cli rl --config ...          # the same code on many processes

Algorithm (one pass per step; the math is paced/rl_losses.py):
    prompts   <- the next prompts of a seeded per-epoch permutation of data.train
                 (or drawn ∝ w(p̂) with prompt_weighting, p̂ from this run's rollouts so far)
    rollouts  <- num_generations completions per prompt (the shared sampler), old log-probs
    rewards   <- reward_funcs (the task verifiers by default); successes -> the ledger
    dynamic_sampling: drop groups whose rewards are all exactly equal, sample more prompts
                 until the batch is full or max_sampling_rounds is spent
    A, keep   <- ADVANTAGES[advantage](rewards)  (grpo | psr | nsr | w_reinforce), per row;
                 ppo: A_t <- GAE(terminal reward, V_t of the critic), per token
    repeat num_iterations times:
        for each micro-batch: ρ_t = π_θ(o_t|q,o_<t) / π_old(o_t|q,o_<t)
            ℓ_t = −min(ρ_t A, clip(ρ_t, 1−ε, 1+ε_high) A) [+ β k3(π_θ, π_ref)] [− c_H H_t]
            L   = LOSS_TYPES[loss_type](ℓ, mask · keep)   [+ vf_coef · clipped value loss]
                  [+ λ Σ F (θ − θ*)² once per optimizer step, regularizer.name=ewc]
            backward
        clip grad norm, optimizer step, scheduler step
    log, evaluate every eval_steps, checkpoint every save_steps

Deviations / choices: one ``step`` is one rollout batch (num_iterations optimizer steps on it);
with num_iterations = 1 the ratio uses the detached current log-probs (ρ = 1, as TRL); with more
it uses the sampler's log-probs (same weights and temperature, no extra forward; TRL recomputes
them). The PPO critic is a copy of the policy's backbone with a zero-initialised scalar head,
trained by the same optimizer (TRL uses a reward model's backbone; we have none).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time

import numpy as np
import torch

from ..checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ..config import RLConfig
from ..evaluate import evaluate
from ..ledger import Ledger, gather_counts, tally
from ..models import encode_prompts, save_pretrained
from ..rewards import REWARDS, compute_rewards, load_reward_function, verifier_reward
from ..rl_losses import (ADVANTAGES, LOSS_TYPES, clipped_surrogate, entropy_from_logits, gae,
                         group_has_variance, kl_k3, reward_zero_std_share, terminal_rewards, value_loss,
                         whiten)
from ..rollout import SAMPLERS, SamplingParams
from ..run import load_model, start_run
from ..runlog import Progress, RunLog, console
from ..tasks import load_sources, verify
from ..teacher import _backbone, response_hidden
from ..weighting import problem_weights
from .distill import pack
from .regularizer import regularizer_from
from .sft import batch_indices, make_scheduler, optimizer_from, update


class ValueModel(torch.nn.Module):
    """PPO critic: a copy of the policy's backbone and a scalar head, V(q, o_<t) per position."""

    def __init__(self, policy):
        super().__init__()
        self.body = copy.deepcopy(_backbone(policy))
        self.head = torch.nn.Linear(policy.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, ids, mask, pos, P: int, R: int) -> torch.Tensor:
        h = self.body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        return self.head(h[:, P - 1: P + R - 1]).squeeze(-1).float()          # (B, R)


def completion_logprobs(model, ids, mask, pos, P: int, R: int, temperature: float,
                        entropy: str = "none"):
    """log π(o_t | q, o_<t) at ``temperature`` for the R completion tokens: (B, R), and the
    per-token entropy (B, R) with ``entropy`` "grad" (differentiable, for a bonus) or "value"
    (detached, for logging); else None. ``model`` may be DDP-wrapped (the forward goes through it)."""
    h = response_hidden(model, ids, mask, pos, P, R)                         # (B, R, H)
    head = (model.module if hasattr(model, "module") else model).get_output_embeddings()
    logits = head(h).float() / temperature                                   # (B, R, V)
    logp = logits.log_softmax(-1).gather(-1, ids[:, P:P + R, None]).squeeze(-1)   # (B, R)
    if entropy == "none":
        return logp, None
    return logp, entropy_from_logits(logits if entropy == "grad" else logits.detach())


def pick_prompts(n_pool: int, count: int, seed: int, start: int, weights=None, key=()) -> list[int]:
    """Indices of ``count`` training prompts: the seeded per-epoch permutation from sample
    ``start`` on (a pure function: resume is exact), or ∝ ``weights`` (seeded by ``key``)."""
    if weights is None:
        return batch_indices(n_pool, seed, start, count)
    live = np.flatnonzero(weights > 0)
    if live.size == 0:
        raise ValueError("rl.prompt_weighting: every prompt has weight 0 (p̂ all 0 or 1)")
    rng = np.random.default_rng([seed, *key])
    return rng.choice(live, count, replace=count > live.size, p=weights[live] / weights[live].sum()).tolist()


def seed_of(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def train(cfg: RLConfig, resume: bool = False) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    r = cfg.rl
    # reward functions load (and fail) before any model does
    funcs = [REWARDS[s] if s in REWARDS else load_reward_function(s) for s in r.reward_funcs]
    run_dir = start_run(cfg, save=main)
    pool = load_sources(cfg.data.train, "data.train")
    held_out = load_sources(cfg.data.eval, "data.eval")
    with accelerator.main_process_first():
        policy, tok, policy_path = load_model(cfg.policy.path, cfg.policy.preset, cfg.policy.init_seed,
                                              cfg.policy.dtype, run_dir)
    prompt_ids = encode_prompts(tok, [e.prompt for e in pool])
    ref = copy.deepcopy(policy).eval().requires_grad_(False) if r.beta > 0 else None
    critic = ValueModel(policy) if r.advantage == "ppo" else None

    params = [{"params": list(policy.parameters())}]
    if critic is not None:
        params.append({"params": list(critic.parameters())})
    optimizer = optimizer_from(params, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim.lr_scheduler_type, cfg.optim.warmup_steps,
                               r.max_steps * r.num_iterations)
    if critic is not None:
        policy, critic, optimizer = accelerator.prepare(policy, critic, optimizer)
    else:
        policy, optimizer = accelerator.prepare(policy, optimizer)
    raw = accelerator.unwrap_model(policy)
    dev = accelerator.device
    # regularizer.name=ewc: Fisher and anchor of the starting weights, before a checkpoint loads
    ewc = regularizer_from(cfg.regularizer, raw, tok, run_dir, resume, save=main)
    if ref is not None:
        ref.to(dev)

    ledger = Ledger(cfg.ledger.path or run_dir / "ledger.sqlite") if main else \
        Ledger(run_dir / f".ledger-rank{rank}.sqlite")
    tag = cfg.ledger.model or f"{run_dir.resolve()}:policy"
    step, prompts_seen = 0, 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, raw, optimizer, scheduler)
        step, prompts_seen = state["step"], state["prompts_seen"]
        if critic is not None:
            from safetensors.torch import load_file
            accelerator.unwrap_model(critic).load_state_dict(load_file(ckpt / "critic.safetensors"))
        dropped = ledger.forget_from(tag, cfg.ledger.stage, step + 1)
        console.print(f"resumed from {ckpt} at step {step} ({dropped} ledger rows past it dropped)")
    elif dropped := ledger.forget_from(tag, cfg.ledger.stage, 0):
        # a fresh run in this directory replaces the last one, its ledger rows included
        console.print(f"[yellow]{dropped} ledger rows of an earlier run ({tag}, {cfg.ledger.stage}) dropped[/]")
    log = RunLog(run_dir, cfg.run.report_to, r.logging_steps, resume_step=step if ckpt else None,
                 enabled=main)

    G = r.num_generations
    adv_kw = {"grpo": {"scale_rewards": r.scale_rewards},
              "w_reinforce": {"lam": r.w_reinforce_lambda}}.get(r.advantage, {})
    trainable = _Params(list(policy.parameters()) + (list(critic.parameters()) if critic is not None else []))
    local_prompts = r.per_device_train_batch_size * r.gradient_accumulation_steps // G
    global_prompts = local_prompts * world
    if main:
        console.print(f"rl ({r.advantage}, loss_type {r.loss_type}): {len(pool)} prompts, "
                      f"{global_prompts} prompts x {G} completions per step, {r.max_steps} steps")

    def held_out_eval() -> dict:
        if not held_out:
            return {}
        res = evaluate(raw, tok, held_out, r.eval_n, [1, r.eval_n], temperature=r.temperature,
                       max_tokens=r.max_completion_length, greedy=True, seed=cfg.run.seed)["overall"]
        return {f"eval/{k}": v for k, v in res.items() if k != "problems"}

    def checkpoint(at: int) -> None:
        accelerator.wait_for_everyone()
        if main:
            extra = {"critic": accelerator.unwrap_model(critic).state_dict()} if critic is not None else None
            save_checkpoint(run_dir, at, raw, tok, optimizer, scheduler,
                            {"prompts_seen": prompts_seen, "policy_path": policy_path},
                            model_state_dict=accelerator.get_state_dict(policy),
                            keep=r.save_total_limit, extra_tensors=extra)

    before = held_out_eval() if step == 0 else {}
    if before and main:
        console.print("before: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items() if v is not None))
    bar = Progress(r.max_steps, "rl", cfg.run.progress and main, initial=step)
    while step < r.max_steps:
        t0 = time.perf_counter()
        weights = None
        if r.prompt_weighting != "none":  # p̂ from the rollouts recorded before this step
            seen = ledger.counts(model=tag, stage=cfg.ledger.stage, before_step=step + 1)
            c = np.array([seen.get(e.id, (1, 2))[0] for e in pool])  # untried: p̂ = 1/2
            k = np.array([seen.get(e.id, (1, 2))[1] for e in pool])
            weights = problem_weights(c, k, r.prompt_weighting, r.weight_alpha, r.weight_beta)
        # ---- rollouts (dynamic sampling: rounds until every process holds local_prompts groups)
        groups: list[dict] = []
        rounds, sampled, zero_std, t_sample, t_reward = 0, 0, [], 0.0, 0.0
        while True:
            idx = pick_prompts(len(pool), global_prompts, cfg.run.seed, prompts_seen, weights, (step, rounds))
            prompts_seen += global_prompts
            mine = idx[rank::world] if len(groups) < local_prompts else []
            rounds += 1
            counts: dict[str, list[int]] = {}   # {problem id: [successes, trials]} of this round
            if mine:
                ts = time.perf_counter()
                ro = SAMPLERS["hf"](raw, [prompt_ids[i] for i in mine],
                                    SamplingParams(n=G, temperature=r.temperature, top_p=r.top_p,
                                                   top_k=r.top_k, max_tokens=r.max_completion_length,
                                                   seed=seed_of(cfg.run.seed, step, rounds, rank)),
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                    batch_size=r.sampling_batch_size)
                t_sample += time.perf_counter() - ts
                ts = time.perf_counter()
                texts = ro.texts(tok)
                rows_ex = [pool[mine[int(j)]] for j in ro.prompt_index]
                correct = [verify(t, e) for t, e in zip(texts, rows_ex)]   # once: ledger and reward
                rewards = compute_rewards([_verified(correct) if f is verifier_reward else f for f in funcs],
                                          r.reward_weights or None, [e.prompt for e in rows_ex], texts, rows_ex)
                t_reward += time.perf_counter() - ts
                counts = tally([e.id for e in rows_ex], correct)
                varied = group_has_variance(rewards, G)
                zero_std.append(reward_zero_std_share(rewards, G))
                sampled += len(mine)
                for j, i in enumerate(mine):
                    if r.dynamic_sampling and not varied[j]:
                        continue
                    rows = slice(j * G, (j + 1) * G)
                    n_tok = ro.completion_mask[rows].sum(-1).tolist()
                    groups.append({"prompt": prompt_ids[i], "rewards": rewards[rows], "correct": correct[rows],
                                   "completions": [c[:n] for c, n in zip(ro.completion_ids[rows].tolist(), n_tok)],
                                   "sample_logp": [lp[:n] for lp, n in zip(ro.sample_logp[rows], n_tok)]})
            # every process records every process's rollouts: the ledgers (and p̂ weights) agree
            ledger.record(gather_counts(counts, world), model=tag, stage=cfg.ledger.stage, step=step + 1)
            short = torch.tensor(float(len(groups) < local_prompts), device=dev)
            if not r.dynamic_sampling or rounds >= r.max_sampling_rounds or \
                    float(accelerator.reduce(short, "sum")) == 0:
                break
        groups = groups[:local_prompts]
        t_rollout = time.perf_counter() - t0

        # ---- advantages
        rewards = torch.cat([g["rewards"] for g in groups]) if groups else torch.zeros(0)
        completions = [c for g in groups for c in g["completions"]]
        prompts = [g["prompt"] for g in groups for _ in range(G)]
        N, L = len(completions), max((len(c) for c in completions), default=1)
        old_logp = torch.zeros(N, L)
        for i, lp in enumerate(lp for g in groups for lp in g["sample_logp"]):
            old_logp[i, : len(lp)] = lp
        micro = [list(range(s, min(s + r.per_device_train_batch_size, N)))
                 for s in range(0, N, r.per_device_train_batch_size)]
        batches = [_pack_rows(prompts, completions, rows, tok.pad_token_id, dev) for rows in micro]
        if r.advantage == "ppo":
            values, cmask = _critic_values(critic, batches, N, L, dev)
            adv, returns = gae(terminal_rewards(rewards, cmask), values, cmask, r.gamma, r.lam)  # (N, L) x 2
            if r.whiten_advantages:
                adv = whiten(adv, cmask)
            keep = torch.ones(N, dtype=torch.bool)
        else:
            adv, keep = ADVANTAGES[r.advantage](rewards, G, **adv_kw) if N else \
                (torch.zeros(0), torch.zeros(0, dtype=torch.bool))
            values = returns = None
        ref_logp = _ref_logprobs(ref, batches, N, L, r.temperature) if ref is not None else None
        # normalisers over the whole (global) batch: kept sequences and their tokens
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.float)
        totals = accelerator.reduce(torch.tensor([float(keep.sum()), float((lengths * keep).sum()),
                                                  float(len(micro))], device=dev), "sum").tolist()
        norm = {"num_sequences": totals[0], "num_tokens": totals[1],
                "max_completion_length": r.max_completion_length, "num_micro_batches": max(totals[2], 1)}

        # ---- optimisation: num_iterations passes, gradient accumulation over micro-batches
        t1 = time.perf_counter()
        stats = {"loss": 0.0, "clip_ratio": [], "kl": [], "entropy": [], "value_loss": 0.0}
        grad_norm, lr = torch.tensor(float("nan")), scheduler.get_last_lr()[0]
        for it in range(r.num_iterations if N else 0):
            for m, (rows, b) in enumerate(zip(micro, batches)):
                sync = m == len(micro) - 1
                with accelerator.no_sync(policy) if not sync else contextlib.nullcontext():
                    loss, st = micro_loss(policy, critic, b, rows, adv, keep, old_logp, ref_logp, values,
                                          returns, r, norm, first_pass=(it == 0))
                    loss = loss * world  # DDP averages gradients over processes; the normalisers are global
                    if ewc is not None and sync:  # λ Σ F (θ − θ*)², once per optimizer step
                        penalty = ewc.penalty(raw)
                        stats["ewc_penalty"] = penalty.item()
                        loss = loss + penalty
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(
                            f"rl: loss is {loss.item()} at step {step + 1}; nothing was updated; the "
                            f"last good checkpoint is {latest_checkpoint(run_dir)}")
                    accelerator.backward(loss)
                stats["loss"] += loss.item() / world
                stats["value_loss"] += st.pop("value_loss", 0.0)
                for key, v in st.items():
                    stats[key].append(v)
            grad_norm, lr = update(accelerator, trainable, optimizer, scheduler, cfg.optim.max_grad_norm)
        t_update = time.perf_counter() - t1
        step += 1

        row = {"reward": float(rewards.mean()) if N else float("nan"),
               "accuracy": float(np.mean([c for g in groups for c in g["correct"]])) if N else float("nan"),
               "frac_reward_zero_std": float(np.mean(zero_std)) if zero_std else float("nan"),
               "groups": len(groups), "prompts_sampled": sampled, "sampling_rounds": rounds,
               "kept_rows": int(keep.sum()), "completion_length": float(lengths.mean()) if N else 0.0,
               "loss": stats["loss"] / max(r.num_iterations, 1), "grad_norm": float(grad_norm), "lr": lr,
               "advantage_mean": float(adv.float().mean()) if N else 0.0,
               "time_rollout": t_rollout, "time_sampling": t_sample, "time_reward": t_reward,
               "time_update": t_update, "step_time": time.perf_counter() - t0}
        for key in ("clip_ratio", "kl", "entropy"):
            if stats[key]:
                row[key] = float(np.mean(stats[key]))
        if "ewc_penalty" in stats:
            row["ewc_penalty"] = stats["ewc_penalty"]
        if critic is not None:
            row["value_loss"] = stats["value_loss"] / max(r.num_iterations, 1)
        if weights is not None:
            row["mean_prompt_weight"] = float(weights.mean())
        if r.eval_steps and step % r.eval_steps == 0 and step < r.max_steps:
            row.update(held_out_eval())
        log.log(step, row, console_keys=("reward", "accuracy", "frac_reward_zero_std", "loss", "entropy"))
        bar.update()
        if r.save_steps and step % r.save_steps == 0 and step < r.max_steps:
            checkpoint(step)
    bar.close()
    checkpoint(step)
    after = held_out_eval()
    if main:
        save_pretrained(raw, tok, run_dir / "model", state_dict=accelerator.get_state_dict(policy))
        if after:
            console.print("after: " + ", ".join(f"{k} {v:.3f}" for k, v in after.items() if v is not None))
    summary = {"command": "rl", "steps": step, "advantage": r.advantage, "loss_type": r.loss_type,
               "before": before, "after": after, "model_dir": str(run_dir / "model")}
    log.summary(summary)
    log.close()
    return summary


def micro_loss(policy, critic, b, rows, adv, keep, old_logp, ref_logp, values, returns, r, norm,
               first_pass: bool):
    """The loss of one micro-batch (a share of the batch loss: summed over micro-batches it is
    the loss of the whole batch) and its statistics."""
    ids, mask, pos, P, R = b
    cmask = mask[:, P:].float()                                              # (b, R)
    kept = cmask * keep[rows].to(cmask)[:, None]                             # (b, R) dropped rows: 0
    entropy = "grad" if r.entropy_coef > 0 else ("value" if first_pass else "none")
    logp, ent = completion_logprobs(policy, ids, mask, pos, P, R, r.temperature, entropy)
    old = logp.detach() if r.num_iterations == 1 else old_logp[rows, :R].to(logp)
    a = adv[rows][:, :R] if adv.dim() == 2 else adv[rows][:, None]           # (b, R) or (b, 1)
    per_token, clipped = clipped_surrogate(logp, old, a.to(logp), r.epsilon, r.epsilon_high)   # (b, R)
    st = {"clip_ratio": float((clipped.float() * kept).sum() / kept.sum().clamp(min=1))}
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp[rows, :R].to(logp))                       # (b, R)
        per_token = per_token + r.beta * kl
        st["kl"] = float((kl.detach() * kept).sum() / kept.sum().clamp(min=1))
    if ent is not None:
        if r.entropy_coef > 0:
            per_token = per_token - r.entropy_coef * ent
        st["entropy"] = float((ent.detach() * cmask).sum() / cmask.sum().clamp(min=1))
    loss = LOSS_TYPES[r.loss_type](per_token, kept, **norm)
    if critic is not None:
        v = critic(ids, mask, pos, P, R)                                     # (b, R)
        vl = value_loss(v, values[rows, :R].to(v), returns[rows, :R].to(v), cmask, r.cliprange_value)
        vloss = LOSS_TYPES[r.loss_type](vl, kept, **norm)
        st["value_loss"] = vloss.item()
        loss = loss + r.vf_coef * vloss
    return loss, st


def _pack_rows(prompts, completions, rows, pad, dev):
    ids, mask, pos, P = pack([prompts[i] for i in rows], [completions[i] for i in rows], pad)
    return ids.to(dev), mask.to(dev), pos.to(dev), P, ids.shape[1] - P


@torch.no_grad()
def _critic_values(critic, batches, N, L, dev):
    """V_t for every completion token of the batch (N, L) and the completion mask (N, L)."""
    values, cmask, at = torch.zeros(N, L), torch.zeros(N, L), 0
    for ids, mask, pos, P, R in batches:
        v = critic(ids, mask, pos, P, R).cpu()                               # (b, R)
        b = ids.shape[0]
        values[at:at + b, :R], cmask[at:at + b, :R] = v, mask[:, P:].float().cpu()
        at += b
    return values * cmask, cmask


@torch.no_grad()
def _ref_logprobs(ref, batches, N, L, temperature):
    out, at = torch.zeros(N, L), 0
    for ids, mask, pos, P, R in batches:
        lp, _ = completion_logprobs(ref, ids, mask, pos, P, R, temperature)
        out[at:at + ids.shape[0], :R] = lp.cpu()
        at += ids.shape[0]
    return out


def _verified(correct: list[bool]):
    """The verifier reward of this round's completions, already computed for the ledger."""
    def verifier(prompts, completions, **kwargs) -> list[float]:
        return [float(c) for c in correct]
    return verifier


class _Params:
    """What ``update`` needs of a model (its parameters): policy and critic clipped together."""

    def __init__(self, params):
        self._params = params

    def parameters(self):
        return iter(self._params)
