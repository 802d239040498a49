"""The trainers' ``regularizer`` section: EWC anchored on the starting weights (docs/methods.md §4).

    paced distill --config ... regularizer.name=ewc regularizer.ewc_lambda=100 \\
        'regularizer.fisher_data=[{source: add, n: 512}, {source: sub, n: 512}]'

Once, at start-up, before the first update (and, on resume, before the checkpoint loads):
    θ*  <- the starting weights (model.path / student.path, or the preset's initialisation)
    F   <- (1/B) Σ_b (∇_θ L_b(θ*))²   L_b = paced.losses.sft_loss (token-mean cross-entropy on the
           reference solution) of mini-batch b of regularizer.fisher_data, B = fisher_batches
           (0: one pass). mode pooled: batches mix every source (a seeded shuffle); separate: one
           Fisher per source, summed (Avalanche's "separate" mode with one shared anchor)
Every step:  loss <- loss + λ Σ_i F_i (θ_i − θ*_i)²   (on the unwrapped model under DDP)

Resume: F and θ* go to ``<run dir>/ewc.pt`` (atomically, before the first step). A resumed run
reads them back (the anchor stays the starting weights, the penalty is bit-identical); if the
file is missing it recomputes them from the freshly loaded starting weights, which gives the
same tensors on the same hardware (no randomness: eval mode, fixed batch order).

Deviations from EWC as published (Kirkpatrick et al. 2017; Avalanche's EWCPlugin): the Fisher is
the empirical one of mini-batch gradients (Avalanche's), on the data's reference solutions, not
on labels sampled from the model; it is taken at the weights a run *starts* from, i.e. the end of
whatever training came before, on data the user names rather than on the previous task's
training stream; one (F, θ*) per run; λ has no 1/2 (Avalanche's ``ewc_lambda``). Under DDP every
process computes the same Fisher on all of fisher_data (no sharding).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..config import RegularizerCfg, to_dict
from ..losses import sft_loss
from ..optim import EWC, diagonal_fisher
from ..runlog import console
from ..tasks import load_sources
from .batches import batch_indices, collate, tokenize_sft

FILE = "ewc.pt"
FISHER_SEED = 0  # the Fisher's batch order: fixed, so F depends on the config and θ* only


def fisher_key(r: RegularizerCfg) -> str:
    """What F depends on besides θ* (λ does not: it may change on resume)."""
    d = to_dict(r)
    return json.dumps({k: d[k] for k in ("fisher_data", "fisher_batches", "fisher_batch_size",
                                          "fisher_max_length", "mode")}, sort_keys=True)


def fisher_batches(r: RegularizerCfg, tokenizer) -> list[list[tuple[torch.Tensor, ...]]]:
    """Groups (pooled: one; separate: one per source) of collated SFT mini-batches
    (input_ids, attention_mask, labels), each (b, T)."""
    groups = []
    sources = [r.fisher_data] if r.mode == "pooled" else [[s] for s in r.fisher_data]
    for i, srcs in enumerate(sources):
        what = "regularizer.fisher_data" + ("" if r.mode == "pooled" else f"[{i}]")
        rows = [tokenize_sft(tokenizer, e.prompt, e.solution, r.fisher_max_length)
                for e in load_sources(srcs, what) if e.solution]
        if not rows:
            raise ValueError(f"{what}: no example has a reference solution to take the Fisher on")
        bs = min(r.fisher_batch_size, len(rows))
        n_batches = r.fisher_batches or math.ceil(len(rows) / bs)  # 0: one pass (last batch topped up)
        groups.append([collate([rows[j] for j in batch_indices(len(rows), FISHER_SEED, b * bs, bs)],
                               tokenizer.pad_token_id) for b in range(n_batches)])
    return groups


def compute_ewc(r: RegularizerCfg, model, tokenizer) -> EWC:
    """EWC(λ) holding one (F, θ*): F as in the module docstring, θ* = the model's current weights."""
    device = next(model.parameters()).device

    def loss_fn(m, batch):
        ids, mask, labels = (t.to(device) for t in batch)
        return sft_loss(m(input_ids=ids, attention_mask=mask).logits, labels)[0]   # logits (b, T, V)

    fishers = [diagonal_fisher(model, group, loss_fn) for group in fisher_batches(r, tokenizer)]
    fisher = {n: sum(f[n] for f in fishers) for n in fishers[0]}                  # separate: Σ_s F_s
    params = dict(model.named_parameters())
    return one_task_ewc(r.ewc_lambda, fisher, {n: params[n].detach().clone() for n in fisher})


def one_task_ewc(lam: float, fisher: dict, anchor: dict) -> EWC:
    """An EWC holding the single pair (F, θ*), through its public state_dict API."""
    ewc = EWC(lam=lam)
    ewc.load_state_dict({"lam": lam, "mode": "separate", "decay": 1.0, "consolidations": 1,
                         "tasks": [{"fisher": fisher, "anchor": anchor}]})
    return ewc


def save_ewc(ewc: EWC, r: RegularizerCfg, path: Path) -> None:
    fisher, anchor = ewc.tasks[0]
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save({"key": fisher_key(r), "fisher": {n: t.cpu() for n, t in fisher.items()},
                "anchor": {n: t.cpu() for n, t in anchor.items()}}, tmp)
    os.replace(tmp, path)


def load_ewc(r: RegularizerCfg, model, path: Path) -> EWC:
    saved = torch.load(path, weights_only=True, map_location="cpu")
    if saved["key"] != fisher_key(r):
        raise ValueError(f"regularizer: {path} holds the Fisher of other settings ({saved['key']}); "
                         "the Fisher settings cannot change on resume (λ can): start a new run dir")
    params = dict(model.named_parameters())
    for n, f in saved["fisher"].items():
        if n not in params or params[n].shape != f.shape:
            raise ValueError(f"regularizer: {path} does not match the model (parameter {n})")
    return one_task_ewc(r.ewc_lambda, *({n: t.to(params[n].device) for n, t in saved[k].items()}
                                        for k in ("fisher", "anchor")))


def regularizer_from(r: RegularizerCfg, model, tokenizer, run_dir, resume: bool, save: bool) -> EWC | None:
    """None for ``regularizer.name: none``; else the run's EWC. Call it on the unwrapped model
    *before* a checkpoint is loaded into it: the anchor is the starting weights. ``resume``
    reads ``<run_dir>/ewc.pt`` when present; ``save`` (the main process) writes it otherwise."""
    if r.name == "none":
        return None
    path = Path(run_dir) / FILE
    if resume and path.is_file():
        ewc = load_ewc(r, model, path)
        console.print(f"ewc: Fisher and anchor read from {path}")
    else:
        ewc = compute_ewc(r, model, tokenizer)
        if save:
            save_ewc(ewc, r, path)
    fisher = ewc.tasks[0][0]
    total = sum(float(f.float().sum()) for f in fisher.values())
    peak = max(float(f.float().max()) for f in fisher.values())
    console.print(f"ewc: λ = {ewc.lam:g}, Σ F = {total:.3g}, max F = {peak:.3g} ({r.mode}, "
                  f"{len(r.fisher_data)} source(s)); anchor = the starting weights")
    return ewc
