"""Supervised fine-tuning on reference solutions.

    paced sft --config configs/sft.yaml model.path=... [--run-dir runs/sft] [--resume]
    accelerate launch -m paced.cli sft --config ...        # the same code on many GPUs

Algorithm:
    examples <- data.train sources, keeping those with a reference solution (a seeded
                train.privileged_share of them with the answer also in the prompt: instead of
                the plain prompt, or as extra copies with train.privileged_extra)
    for step = 1 .. max_steps:
        batch  <- next global batch of the seeded, per-epoch permutation (each process its slice)
        loss   <- token-mean cross-entropy on response tokens only (prompt and padding masked)
                  (+ λ Σ F (θ − θ*)² with regularizer.name=ewc: paced/train/regularizer.py)
        backward; clip grad norm; optimizer step; scheduler step
        log one metrics row; every save_steps: atomic checkpoint (weights, optimizer, scheduler,
        RNG, data position)
    save the final model to <run dir>/model, summary.json

Resume (``--resume``) restores the newest complete checkpoint and continues; the data order is a
pure function of (seed, epoch) and the position is saved, so a killed-and-resumed run ends with
the same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from ..checkpoint import latest_checkpoint, load_checkpoint, resume_or_fresh, save_checkpoint
from ..config import SFTConfig, to_dict
from ..guide import template_fields
from ..losses import sft_loss
from ..models import save_pretrained, stop_token_ids
from ..rundir import load_model, start_run
from ..runlog import Progress, RunLog, console
from ..tasks import load_sources
from .batches import batch_indices, collate, tokenize_sft
from .optimization import make_scheduler, optimizer_from, update
from .regularizer import regularizer_from

def sft_prompts(examples, train_cfg, seed: int) -> list[tuple[int, str]]:
    """(example index, prompt) pairs to train on. A seeded ``privileged_share`` of the examples
    also show the answer (``privileged_template``), so that the model learns to use it when it
    is there: in place of their plain prompt, or — ``privileged_extra`` — as extra copies next to
    it (the plain task keeps all its examples). A template with ``{hint}`` shows the example's
    hint instead (a hint-literate student for Guide); examples without a hint keep their plain
    prompt."""
    plain = [(i, e.prompt) for i, e in enumerate(examples)]
    if train_cfg.privileged_share == 0:
        return plain
    shown = np.random.default_rng([seed, 17]).random(len(examples)) < train_cfg.privileged_share
    uses_hint = "hint" in template_fields(train_cfg.privileged_template)   # no hint, no copy
    privileged = {i: train_cfg.privileged_template.format(prompt=e.prompt, answer=e.answer, hint=e.hint)
                  for i, e in enumerate(examples) if shown[i] and (e.hint or not uses_hint)}
    if train_cfg.privileged_extra:
        return plain + sorted(privileged.items())
    return [(i, privileged.get(i, p)) for i, p in plain]


def train(cfg: SFTConfig, resume: bool = False, optimizer_state: dict | None = None) -> dict:
    """``optimizer_state``: an optimizer ``state_dict`` (e.g. a checkpoint's) whose per-parameter
    state (CLASSP's accumulators, Adam's moments) this run starts from; the hyper-parameters
    stay the config's. For continual fine-tuning, one task per run (benchmarks/continual_lm.py)."""
    from accelerate import Accelerator

    # cpu=True on a CPU machine: one process, or gloo DDP under torchrun / accelerate launch
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    run_dir = start_run(cfg, save=main, resume=resume)
    with accelerator.main_process_first():  # a preset model is built once, by the main process
        model, tok, model_path = load_model(cfg.model.path, cfg.model.preset, cfg.model.init_seed,
                                            cfg.model.dtype, run_dir, cfg.model.gradient_checkpointing)
    examples = [e for e in load_sources(cfg.data.train, "data.train") if e.solution]
    if not examples:
        raise ValueError("data.train: no example has a reference solution to train on")
    stops = stop_token_ids(model, tok)
    data = [tokenize_sft(tok, p, examples[i].solution, cfg.train.max_length, cfg.model.system_prompt, stops)
            for i, p in sft_prompts(examples, cfg.train, cfg.run.seed)]

    optimizer = optimizer_from(model.parameters(), cfg.optim)
    if optimizer_state is not None:
        optimizer.load_state_dict({"state": optimizer_state["state"],
                                   "param_groups": optimizer.state_dict()["param_groups"]})
    # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step
    # it once per process).
    scheduler = make_scheduler(optimizer, cfg.optim.lr_scheduler_type, cfg.optim.warmup_steps,
                               cfg.train.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    # regularizer.name=ewc: Fisher and anchor of the starting weights, before a checkpoint loads
    ewc = regularizer_from(cfg.regularizer, raw, tok, run_dir, resume, save=main)

    step = 0
    ckpt, state = resume_or_fresh(run_dir, resume, lambda c: load_checkpoint(c, raw, optimizer, scheduler))
    if ckpt is not None:
        step = state["step"]
        console.print(f"resumed from {ckpt} at step {step}")
    elif resume:
        console.print(f"[yellow]--resume: no checkpoint in {run_dir}, starting fresh[/]")
    log = RunLog(run_dir, cfg.run.report_to, cfg.run.logging_steps,
                 resume_step=step if ckpt else None, enabled=main, config=to_dict(cfg))

    world, rank = accelerator.num_processes, accelerator.process_index
    micro, accum = cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps
    global_batch = micro * accum * world
    if main:
        console.print(f"sft: {len(examples)} examples, {sum(p.numel() for p in model.parameters()):,} "
                      f"parameters, {cfg.train.max_steps} steps x {global_batch} sequences")

    def checkpoint(at: int) -> None:
        accelerator.wait_for_everyone()
        weights = accelerator.get_state_dict(model)   # on every process: under FSDP it gathers the shards
        if main:
            save_checkpoint(run_dir, at, accelerator.unwrap_model(model), tok, optimizer, scheduler,
                            {"samples_seen": at * global_batch, "model_path": model_path},
                            model_state_dict=weights, keep=cfg.run.save_total_limit)

    model.train()
    bar = Progress(cfg.train.max_steps, "sft", cfg.run.progress and main, initial=step)
    t_last, loss_value = time.time(), float("nan")
    while step < cfg.train.max_steps:
        idx = batch_indices(len(data), cfg.run.seed, step * global_batch, global_batch)
        losses, tokens = [], 0
        for a in range(accum):
            lo = (a * world + rank) * micro
            rows = [data[i] for i in idx[lo: lo + micro]]
            ids, mask, labels = (t.to(accelerator.device) for t in collate(rows, tok.pad_token_id))
            # gradients are all-reduced across processes only on the last micro-batch
            with accelerator.no_sync(model) if a < accum - 1 else contextlib.nullcontext():
                logits = model(input_ids=ids, attention_mask=mask).logits    # (B, T, V)
                loss, n = sft_loss(logits, labels)
                # λ Σ F (θ − θ*)² (0-dim), once per step: with the last micro-batch's backward
                penalty = ewc.penalty(raw) if ewc is not None and a == accum - 1 else None
                accelerator.backward(loss / accum if penalty is None else loss / accum + penalty)
            losses.append(loss.item())
            tokens += n
        # the mean over processes (each process saw its own slice of the batch)
        loss_value = float(accelerator.reduce(torch.tensor(np.mean(losses), device=accelerator.device),
                                              "mean"))
        total = loss_value + (penalty.item() if penalty is not None else 0.0)   # + the EWC penalty
        if not math.isfinite(total):  # stop before a bad update reaches the weights
            raise FloatingPointError(f"sft: loss is {total} at step {step + 1}; nothing was "
                                     f"updated; the last good checkpoint is {latest_checkpoint(run_dir)}")
        grad_norm, lr = update(accelerator, model, optimizer, scheduler, cfg.optim.max_grad_norm)
        step += 1
        now = time.time()
        log.log(step, {"loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens,
                       "step_time": now - t_last, "tokens_per_s": tokens * world / max(now - t_last, 1e-9),
                       **({"ewc_penalty": penalty.item()} if penalty is not None else {})},
                console_keys=("loss", "lr", "grad_norm", "tokens_per_s"))
        t_last = now
        bar.update(1)
        if cfg.run.save_steps and step % cfg.run.save_steps == 0 and step < cfg.train.max_steps:
            checkpoint(step)
    bar.close()
    checkpoint(step)
    weights = accelerator.get_state_dict(model)
    if main:
        save_pretrained(accelerator.unwrap_model(model), tok, run_dir / "model", state_dict=weights)
    summary = {"command": "sft", "steps": step, "examples": len(examples),
               "final_loss": loss_value,
               "model_dir": str(run_dir / "model")}
    log.summary(summary)
    log.close()
    return summary
