"""Seconds per distillation step, ours against TRL on the same batches.

    pip install trl                                       # optional benchmark dependency
    python benchmarks/distill_step.py --quick             # ~1 min on 2 idle cores, up to ~6 on busy ones
    python benchmarks/distill_step.py --quick --threads 2 1   # also time at 1 thread
    python benchmarks/distill_step.py                     # full: 300 repeats (~5-10 min)

Writes benchmarks/results/distill_step.json (``--out``). Without TRL installed the TRL rows are
skipped and everything else still runs.

Setup shared by every contender (all fp32, CPU, ``--threads`` torch threads, default 2):
student = ``tiny_model("tiny")``, teacher = ``tiny_model("small")`` (frozen), both with
``char_tokenizer()`` and the same random initialisation for every contender (each gets its own
copy of the student and its own optimizer); prompts = ``generate("add", ..., seed=0, (1, 8))``
rendered with the chat template (``encode_prompts``); batch = ``--batch`` prompts (16), response
length ``--max-new`` tokens (16); the same batch of prompts goes to every contender in a repeat.
AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0: paced's defaults), gradient-norm clip 1.0,
no LR schedule, no gradient checkpointing, no logging / evaluation / saving inside the timed step.

Ours: ``paced.train.distill.train_on``, the loop's own step (the function ``train`` calls once
the batch is drawn), with a ``Responder`` and a ``Learner`` built here (an ``Accelerator`` on the
student's device: the CPU here, CUDA under benchmarks/gpu_check.py; a constant LR schedule), uniform weights normalised by ``paced.weighting.normalize``:
  ours_fkl  off-policy forward KL: teacher responses generated once, greedily, with
            ``paced.rollout.sample`` (T = 0) and put in the Responder's greedy cache (as the loop
            does on first sight); per step ``pack`` (once: the teacher is not privileged, so it
            shares the student's batch, as in the loop), the teacher's hidden states from the
            loop's ``TeacherHiddenCache`` (greedy responses are fixed, so the frozen teacher's
            hidden states are computed on a problem's first visit and reused; the 4 batches
            cycle, so after the first 4 steps the teacher is not run) + ``distill_step(...,
            "forward_kl")`` (``response_hidden`` + ``chunked_token_loss`` + ``masked_mean``)
            + backward + clip + AdamW step.
  ours_fkl_nocache  the same with ``teacher_cache_mib=0``: the teacher backbone runs every step
            (what a pool too large for the cache, or sampled teacher responses, costs).
  ours_rkl  on-policy reverse KL: per step one student response per prompt from
            ``paced.rollout.sample`` (T = 1, top-k 0, top-p 1), then the same with "reverse_kl";
            the teacher runs on the response tokens only, attending to its KV cache of the
            prompt (the loop's ``TeacherPromptCache``, filled on a problem's first visit).
  ours_rkl_nocache  the same with ``teacher_cache_mib=0``: the teacher runs on prompt + response.

TRL (version recorded in the JSON; written against trl 1.16.0), each called as
``trainer.training_step(trainer.model, inputs)`` + ``clip_grad_norm_(1.0)`` +
``trainer.optimizer.step()`` + ``zero_grad`` on the same batch (the trainer's own optimizer,
``optim="adamw_torch"``, same lr / betas / weight decay; ``bf16=False``, ``use_cpu=True``,
``gradient_checkpointing=False``, ``report_to="none"``, no logging / saving / evaluation):
  trl_gkd_fkl      off-policy comparison. ``trl.experimental.gkd.GKDTrainer`` with
                   ``GKDConfig(lmbda=0.0, seq_kd=False, beta=0.0, temperature=1.0)``: lmbda = 0
                   never samples from the student and seq_kd = False does not regenerate from the
                   teacher, so every step trains on the dataset's completions, which are exactly
                   our cached greedy teacher responses (fed to TRL's own ``DataCollatorForChatML``
                   as pre-tokenised ``input_ids`` + ``completion_mask``, so the tokens are
                   identical). beta = 0 is forward KL(p_T || p_S) in TRL's GKD convention
                   (``F.kl_div(student_logp, teacher_logp, log_target=True)``); GKD's loss uses
                   temperature 1 in the divergence whatever ``temperature`` says.
  trl_gkd_rkl      on-policy comparison. ``GKDTrainer`` with ``GKDConfig(lmbda=1.0, beta=1.0,
                   temperature=1.0, max_new_tokens=--max-new)``: every step samples one student
                   completion per prompt with ``model.generate`` (do_sample, T = 1, top-k 0,
                   top-p 1), then reverse KL(p_S || p_T) (beta = 1) on full-vocabulary logits.
  trl_distill_rkl  on-policy comparison, the better match. ``trl.DistillationTrainer`` (TRL's
                   maintained on-policy distiller; it has no off-policy mode, hence GKD above) with
                   ``DistillationConfig(beta=1.0, temperature=1.0, top_k=0, top_p=1.0,
                   max_completion_length=--max-new)``: student generation with ``model.generate``
                   each step, backbone hidden states + TRL's chunked divergence (reverse KL).
The ratio reported is ours / TRL (target <= 0.8). At these toy sizes (vocab 100, ~35-token
sequences) a step costs milliseconds: the comparison measures framework, generation and
autograd overhead far more than the loss kernels; it says nothing about large-vocabulary cost.

Interleaving: 4 warm-up steps for each (every batch once: the teacher caches are filled), then ``R`` repeats (40 quick, 300 full,
or fewer: at least 5, stopping once ``--budget`` seconds are spent, 90 quick / 420 full);
in each repeat every contender runs one step, in an order rotated by one each repeat. Reported:
median s/step (and IQR), and the mean response length each contender trained on (on-policy
lengths are sampled, so they differ a little). ``sft``, a student-only SFT step
(token-mean cross-entropy via ``paced.losses.sft_loss``) on the same prompts + cached teacher
responses, is timed alongside as a reference.
Our steps' phase breakdown is what ``train_on`` logs into the loop's metrics rows: sampling
(responses), teacher (pack + the teacher's hidden states), forward (student forward + chunked
loss + agreement), backward, optimizer (clip + AdamW + schedule). Nothing in paced is replaced.

Peak memory of the same steps is benchmarks/distill_memory.py's claim (it imports these
contenders); that zero-weight problems never reach a training forward is a test
(tests/test_distill.py::test_zero_weight_problems_are_never_forwarded).

Threads: ``--threads 2 1`` times both counts in turn (the JSON keeps each under ``by_threads``).
On a machine whose cores are already busy with other work, 2 OpenMP threads per process can be
pathological for steps made of hundreds of millisecond-sized kernels: every parallel region waits
for a worker that the scheduler has to wake, and steps were seen to take 10-50x longer (seconds
instead of ~0.1 s, for every contender alike, which squashes every ratio towards 1). The
single-thread numbers are the stable ones on such a machine; compare ratios, not absolute times.

The machine these numbers come from is shared and usually busy: expect noise of tens of
percent between runs; the interleaving keeps the ratios fairer than the absolute times.
"""
from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import (have_trl, interleaved, machine, paired_ratio, parser, spread,  # noqa: E402
                    table, write_json)
from paced.losses import IGNORE, loss_kwargs, sft_loss  # noqa: E402
from paced.models import char_tokenizer, encode_prompts, logits_head, tiny_model  # noqa: E402
from paced.rollout import SamplingParams, sample  # noqa: E402
from paced.tasks.synthetic import generate  # noqa: E402
from paced.teacher import TeacherHiddenCache, TeacherPromptCache  # noqa: E402
from paced.train import distill as D  # noqa: E402
from paced.train.batches import pack  # noqa: E402
from paced.train.optimization import make_optimizer, make_scheduler  # noqa: E402
from paced.weighting import normalize  # noqa: E402

LR, BETAS, WD, CLIP, CHUNK = 1e-3, (0.9, 0.99), 0.0, 1.0, 256
OURS = ("ours_fkl", "ours_fkl_nocache", "ours_rkl", "ours_rkl_nocache")
TRL_NAMES = ("trl_gkd_fkl", "trl_gkd_rkl", "trl_distill_rkl")
COMPARISONS = (("off-policy forward KL", "ours_fkl", "trl_gkd_fkl"),
               ("off-policy forward KL, no teacher cache", "ours_fkl_nocache", "trl_gkd_fkl"),
               ("on-policy reverse KL, no teacher cache", "ours_rkl_nocache", "trl_gkd_rkl"),
               ("on-policy reverse KL, no teacher cache", "ours_rkl_nocache", "trl_distill_rkl"),
               ("on-policy reverse KL", "ours_rkl", "trl_gkd_rkl"),
               ("on-policy reverse KL", "ours_rkl", "trl_distill_rkl"))


# ---------------------------------------------------------------------------------------------
# The shared setup and one step function per contender
# ---------------------------------------------------------------------------------------------
class Setup:
    def __init__(self, batch: int, max_new: int, n_batches: int = 4, seed: int = 0):
        self.tok = tok = char_tokenizer()
        self.eos, self.pad = tok.eos_token_id, tok.pad_token_id
        self.B, self.T = batch, max_new
        self.examples = generate("add", batch * n_batches, seed=seed, difficulty=(1, 8))
        self.prompts = encode_prompts(tok, [e.prompt for e in self.examples])
        self.batches = [list(range(i * batch, (i + 1) * batch)) for i in range(n_batches)]
        self.student0 = tiny_model("tiny", len(tok), seed=seed)
        self.teacher0 = tiny_model("small", len(tok), seed=seed + 1).eval().requires_grad_(False)
        for m in (self.student0, self.teacher0):
            m.generation_config.pad_token_id, m.generation_config.eos_token_id = self.pad, self.eos
        # The loop's greedy teacher cache: generated once, outside the timed steps.
        ro = sample(self.teacher0, self.prompts, SamplingParams(temperature=0.0, max_tokens=max_new),
                    eos_token_id=self.eos, pad_token_id=self.pad)
        self.teacher_resp = [row[:n] or [self.eos] for row, n in
                             zip(ro.completion_ids.tolist(), ro.lengths.tolist())]

    def batch_of(self, r: int) -> list[int]:
        return self.batches[r % len(self.batches)]

    def student(self):
        return copy.deepcopy(self.student0).train()

    def teacher(self):
        return copy.deepcopy(self.teacher0)


def ours(setup: Setup, loss_type: str, cache: bool = True):
    """One step of paced.train.distill.train's loop: its ``train_on`` (uniform weights, no logging)."""
    from accelerate import Accelerator
    student, teacher = setup.student(), setup.teacher()
    dev = next(student.parameters()).device            # the batches follow the student (CPU here)
    opt = make_optimizer(student.parameters(), "adamw", LR, WD, *BETAS)
    ln = D.Learner(Accelerator(cpu=dev.type == "cpu"), student, opt, make_scheduler(opt, "constant", 0, 1), CLIP, CHUNK)
    prompts = {str(i): p for i, p in enumerate(setup.prompts)}
    rs = D.Responder(teacher, student, prompts, prompts, [setup.eos], setup.pad, setup.eos, setup.T,
                     teacher_temperature=0.0, student_temperature=1.0, seed=0, backend="hf",
                     cache={str(i): r for i, r in enumerate(setup.teacher_resp)})   # greedy, made once
    who = "student" if loss_type == "reverse_kl" else "teacher"
    # the loop's caches at its default teacher_cache_mib (1 GiB each)
    teacher_cache = ((TeacherHiddenCache if who == "teacher" else TeacherPromptCache)(1024 * 2 ** 20)
                     if cache else None)
    head_t, kw = logits_head(teacher), loss_kwargs(loss_type)

    def step(r: int) -> dict:
        ids = [str(i) for i in setup.batch_of(r)]
        factors = torch.as_tensor(normalize(np.ones(len(ids)), "sum"), dtype=torch.float32, device=dev)
        _, m = D.train_on(rs, ln, head_t, teacher_cache, ids, who, r, factors, loss_type, kw)
        return {"tokens": m["response_tokens"], "phases": {k[5:]: v for k, v in m.items() if k.startswith("time_")}}
    return step


def sft(setup: Setup):
    """Student-only SFT step on the same prompts + cached teacher responses (memory reference)."""
    student = setup.student()
    dev = next(student.parameters()).device
    opt = make_optimizer(student.parameters(), "adamw", LR, WD, *BETAS)

    def step(r: int) -> dict:
        idx = setup.batch_of(r)
        ids, mask, pos, P = pack([setup.prompts[i] for i in idx], [setup.teacher_resp[i] for i in idx], setup.pad)
        labels = ids.masked_fill(mask == 0, IGNORE)
        labels[:, :P] = IGNORE
        ids, mask, pos, labels = (t.to(dev) for t in (ids, mask, pos, labels))
        loss, n = sft_loss(student(input_ids=ids, attention_mask=mask, position_ids=pos).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"tokens": n}
    return step


def _trl_common(out_dir: str, batch: int) -> dict:
    return dict(output_dir=out_dir, per_device_train_batch_size=batch, learning_rate=LR, adam_beta1=BETAS[0],
                adam_beta2=BETAS[1], weight_decay=WD, max_grad_norm=CLIP, optim="adamw_torch",
                lr_scheduler_type="constant", bf16=False, fp16=False, use_cpu=True,
                gradient_checkpointing=False, report_to="none", logging_strategy="no",
                save_strategy="no", eval_strategy="no", disable_dropout=True, seed=0,
                dataloader_num_workers=0)


def trl_gkd(setup: Setup, on_policy: bool, out_dir: str):
    import logging

    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    logging.getLogger("trl").setLevel(logging.ERROR)  # the "use DistillationTrainer" hint at lmbda=1
    args = GKDConfig(**_trl_common(out_dir, setup.B), lmbda=1.0 if on_policy else 0.0,
                     beta=1.0 if on_policy else 0.0, seq_kd=False, temperature=1.0,
                     max_new_tokens=setup.T, max_length=1024)
    from paced.models import render_prompt
    rows = [{"prompt": render_prompt(setup.tok, e.prompt), "input_ids": p + r,
             "completion_mask": [0] * len(p) + [1] * len(r)}
            for e, p, r in zip(setup.examples, setup.prompts, setup.teacher_resp)]
    trainer = GKDTrainer(model=setup.student(), teacher_model=setup.teacher(), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=setup.tok)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    batches = [trainer.data_collator([rows[i] for i in b]) for b in setup.batches]

    def step(r: int) -> dict:
        inputs = dict(batches[r % len(batches)])  # training_step replaces input_ids/labels in place
        loss = trainer.training_step(trainer.model, inputs)
        if not np.isfinite(loss.item()):
            raise FloatingPointError(f"TRL GKD: loss {loss.item()}")
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), CLIP)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return {"tokens": int((inputs["labels"] != -100).sum())}
    return step


def trl_distill(setup: Setup, out_dir: str):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    args = DistillationConfig(**_trl_common(out_dir, setup.B), beta=1.0, temperature=1.0, top_k=0, top_p=1.0,
                              max_completion_length=setup.T, shuffle_dataset=False)
    rows = [{"prompt": [{"role": "user", "content": e.prompt}]} for e in setup.examples]
    trainer = DistillationTrainer(model=setup.student(), teacher_model=setup.teacher(), args=args,
                                  train_dataset=Dataset.from_list(rows), processing_class=setup.tok)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    ids = trainer._tokenize_prompts([rows[i]["prompt"] for i in setup.batches[0]])[0]
    assert ids == [setup.prompts[i] for i in setup.batches[0]], "TRL tokenises the prompts differently"

    def step(r: int) -> dict:
        loss = trainer.training_step(trainer.model, [rows[i] for i in setup.batch_of(r)], None)
        if not np.isfinite(loss.item()):
            raise FloatingPointError(f"TRL Distillation: loss {loss.item()}")
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), CLIP)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        lengths = trainer._metrics["train"]["completions/mean_length"]
        return {"tokens": round(lengths[-1] * setup.B)}
    return step


def make(name: str, setup: Setup, tmp: str):
    if name == "ours_fkl":
        return ours(setup, "forward_kl")
    if name == "ours_fkl_nocache":
        return ours(setup, "forward_kl", cache=False)
    if name == "ours_rkl":
        return ours(setup, "reverse_kl")
    if name == "ours_rkl_nocache":
        return ours(setup, "reverse_kl", cache=False)
    if name == "sft":
        return sft(setup)
    if name == "trl_gkd_fkl":
        return trl_gkd(setup, False, os.path.join(tmp, name))
    if name == "trl_gkd_rkl":
        return trl_gkd(setup, True, os.path.join(tmp, name))
    if name == "trl_distill_rkl":
        return trl_distill(setup, os.path.join(tmp, name))
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# Timing (interleaved)
# ---------------------------------------------------------------------------------------------
def measure(names: list[str], batch: int, max_new: int, repeats: int, warmup: int, budget_s: float) -> dict:
    """Interleaved steps; stops early (after at least 5 repeats) once ``budget_s`` is spent."""
    setup = Setup(batch, max_new)
    with tempfile.TemporaryDirectory() as tmp:
        t = interleaved({n: make(n, setup, tmp) for n in names}, repeats, warmup, budget_s, min_repeats=5)
    res = {}
    for n in names:
        out = t.results[n]
        res[n] = {**spread(t.seconds[n]), "repeats": len(out),
                  "mean_response_tokens": statistics.mean(o["tokens"] for o in out) / batch}
        if "phases" in out[0]:
            res[n]["phases_median_s"] = {k: statistics.median(o["phases"][k] for o in out) for k in out[0]["phases"]}
    return res


def compare(tim: dict) -> list[dict]:
    """ratio = median ours / median TRL; paired_ratio = median (and IQR) over repeats of the two
    steps' ratio within one repeat (both ran back to back, so slow spells of a shared machine cancel)."""
    out = []
    for label, o, t in COMPARISONS:
        if o in tim and t in tim:
            pr = paired_ratio(tim[o]["all_s"], tim[t]["all_s"])
            out.append({"comparison": label, "ours": o, "trl": t, "ours_s": tim[o]["median_s"],
                        "trl_s": tim[t]["median_s"], "ratio": tim[o]["median_s"] / tim[t]["median_s"],
                        "paired_ratio": pr["median"], "paired_ratio_iqr": pr["iqr"]})
    return out


def print_timing(tim: dict, comps: list[dict], threads: int, seconds: float) -> None:
    reps = min(r["repeats"] for r in tim.values())
    print(f"\n{threads} thread(s): median s/step over {reps} interleaved repeats ({seconds:.0f} s)")
    print(*table(["contender", "median s", "IQR", "resp tok"],
                 [[n, f"{r['median_s']:.4f}", "{:.4f}-{:.4f}".format(*r["iqr_s"]), f"{r['mean_response_tokens']:.1f}"]
                  for n, r in tim.items()]), sep="\n")
    for n in OURS:
        ph = tim[n]["phases_median_s"]
        print(f"  {n} phases (median s): " + ", ".join(f"{k} {v:.4f}" for k, v in ph.items()))
    if comps:
        print(*table(["comparison", "ours", "TRL", "ours/TRL", "paired"],
                     [[c["comparison"], c["ours"], c["trl"], f"{c['ratio']:.2f}", f"{c['paired_ratio']:.2f}"]
                      for c in comps]), "(target <= 0.8)", sep="\n")


# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = parser(__doc__, "40 repeats (~1-6 minutes)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per contender (quick 40, full 300)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="torch threads; several values time each in turn")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of timed repeats per thread count before stopping early (quick 90, full 420)")
    ap.add_argument("--out", default="distill_step.json", help="a file name in benchmarks/results/, or a path")
    a = ap.parse_args()

    import warnings
    warnings.filterwarnings("ignore")
    from paced.models import quiet_hf
    quiet_hf()
    repeats = a.repeats or (40 if a.quick else 300)
    budget = a.budget or (90.0 if a.quick else 420.0)
    trl_ok = have_trl()
    if not trl_ok:
        print("trl is not installed: TRL rows skipped (pip install trl)")
    names = ["sft", *OURS] + (list(TRL_NAMES) if trl_ok else [])
    info = machine()
    print(f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}; "
          f"threads {a.threads}, batch {a.batch}, max_new {a.max_new}, repeats {repeats}; "
          f"load average {info['loadavg_start'][0]:.2f} on {info['cpus']} CPUs")
    timings = {}
    for th in a.threads:
        torch.set_num_threads(th)
        t0 = time.perf_counter()
        tim = measure(names, a.batch, a.max_new, repeats, 4, budget)  # 4 = every batch once
        comps = compare(tim)
        print_timing(tim, comps, th, time.perf_counter() - t0)
        timings[str(th)] = {"timing": tim, "comparisons": comps, "loadavg_after": os.getloadavg()}
    info["loadavg_end"] = os.getloadavg()
    result = {"benchmark": "distill_step", "mode": "quick" if a.quick else "full", "machine": info,
              "settings": {"batch": a.batch, "max_new_tokens": a.max_new, "threads": a.threads,
                           "repeats_max": repeats, "budget_s": budget, "student": "tiny", "teacher": "small", "dtype": "float32",
                           "lr": LR, "betas": BETAS, "weight_decay": WD, "max_grad_norm": CLIP,
                           "chunk_size": CHUNK},
              "trl_configs": {
                  "trl_gkd_fkl": "trl.experimental.gkd.GKDTrainer, GKDConfig(lmbda=0.0, seq_kd=False, beta=0.0, "
                                 "temperature=1.0): dataset completions = our cached greedy teacher responses",
                  "trl_gkd_rkl": "GKDTrainer, GKDConfig(lmbda=1.0, beta=1.0, temperature=1.0, max_new_tokens=T): "
                                 "student model.generate each step",
                  "trl_distill_rkl": "trl.DistillationTrainer, DistillationConfig(beta=1.0, temperature=1.0, "
                                     "top_k=0, top_p=1.0, max_completion_length=T): student generate each step",
                  "common": "training_step + clip_grad_norm_(1.0) + optimizer.step (adamw_torch), bf16=False, "
                            "use_cpu=True, gradient_checkpointing=False, no logging/saving/eval"},
              "by_threads": timings,
              "notes": "shared, busy machine: absolute times are noisy (see the load averages); ratios come "
                       "from interleaved runs; with busy cores the 1-thread timings are the stable ones"}
    print(f"\nwrote {write_json(a.out, result)}")


if __name__ == "__main__":
    main()
