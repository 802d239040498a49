"""Peak memory of one distillation step against an SFT step on the same batch (ours and TRL's).

    python benchmarks/distill_memory.py --quick     # ours and SFT only (~1 min)
    python benchmarks/distill_memory.py             # also TRL's GKD and Distillation trainers (~3 min)

Writes benchmarks/results/distill_memory.json (``--out``). The claim: a distillation step adds at
most 1.5x the memory an SFT step adds, with the teacher in memory beside the student.

The contenders, models, batch and optimizer are distill_step.py's (its docstring describes them;
they are imported from it, so both benchmarks time and weigh the same steps): ``sft`` (a
student-only step, token-mean cross-entropy via ``paced.losses.sft_loss``, on the same prompts +
cached teacher responses), ``ours_fkl`` / ``ours_rkl`` (``paced.train.distill.train_on``, teacher
caches on) and, in full mode, ``trl_gkd_fkl``, ``trl_gkd_rkl``, ``trl_distill_rkl``.

Method: one fresh subprocess per contender, run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
glibc returns freed tensor memory to the OS and RSS follows live memory. Each subprocess builds
its models, runs one warm-up step per batch (one-time allocations, the optimizer state and the
teacher caches' entries: resting memory, bounded by ``teacher_cache_mib``, not memory a step
adds), resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``), reads VmRSS (the
resting state), runs 3 steps and reads VmHWM. Reported: step delta = VmHWM - resting VmRSS (the
memory a step adds) and peak = VmHWM, both also as ratios to ``sft``. The absolute peak is
dominated by the Python/torch runtime (~0.4 GB) at this size; the step delta is the meaningful
ratio. tracemalloc does not see torch's allocations, hence RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import have_trl, in_child, machine, parser, peak_rss, table, write_json  # noqa: E402
from distill_step import TRL_NAMES, Setup, make  # noqa: E402

NAMES = ("sft", "ours_fkl", "ours_rkl")


def memory_child(name: str, batch: int, max_new: int, steps: int = 3) -> dict:
    """In a fresh process: resting RSS after warm-up on every batch, then the peak over ``steps``."""
    setup = Setup(batch, max_new)
    with tempfile.TemporaryDirectory() as tmp:
        step = make(name, setup, tmp)
        for w in range(len(setup.batches)):
            step(-1 - w)
        rest, peak, _ = peak_rss(lambda: [step(r) for r in range(steps)])
    return {"rest_mib": rest / 2 ** 20, "peak_mib": peak / 2 ** 20, "step_delta_mib": (peak - rest) / 2 ** 20,
            "lifetime_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def memory(names: list[str], batch: int, max_new: int, threads: int) -> dict:
    out = {n: in_child(__file__, ["--_child", n, "--batch", str(batch), "--max-new", str(max_new),
                                  "--threads", str(threads)]) for n in names}
    base = out.get("sft", {})
    for row in out.values():
        if "error" not in row and base and "error" not in base:
            row["step_delta_vs_sft"] = row["step_delta_mib"] / max(base["step_delta_mib"], 1e-9)
            row["peak_vs_sft"] = row["peak_mib"] / base["peak_mib"]
    return out


def main() -> None:
    ap = parser(__doc__, "ours and SFT only, no TRL (~1 minute)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="distill_memory.json", help="a file name in benchmarks/results/, or a path")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a._child:
        print(json.dumps(memory_child(a._child, a.batch, a.max_new)))  # read by in_child
        return
    trl_ok = have_trl()
    if not trl_ok and not a.quick:
        print("trl is not installed: TRL rows skipped (pip install trl)")
    names = [*NAMES] + (list(TRL_NAMES) if trl_ok and not a.quick else [])
    info, t0 = machine(), time.perf_counter()
    mem = memory(names, a.batch, a.max_new, a.threads)
    print(f"peak memory per step (RSS, one subprocess each, batch {a.batch}, {a.max_new} new tokens, "
          f"{time.perf_counter() - t0:.0f} s)")
    print(*table(["config", "rest MiB", "peak MiB", "step +MiB", "delta/SFT", "peak/SFT"],
                 [[n, "failed"] + [""] * 4 if "error" in r else
                  [n, f"{r['rest_mib']:.1f}", f"{r['peak_mib']:.1f}", f"{r['step_delta_mib']:.1f}",
                   f"{r.get('step_delta_vs_sft', float('nan')):.2f}", f"{r.get('peak_vs_sft', float('nan')):.2f}"]
                  for n, r in mem.items()]), "(target: ours' step delta <= 1.5x SFT's)", sep="\n")
    result = {"benchmark": "distill_memory", "mode": "quick" if a.quick else "full", "machine": info,
              "settings": {"batch": a.batch, "max_new_tokens": a.max_new, "threads": a.threads, "steps": 3,
                           "student": "tiny", "teacher": "small", "dtype": "float32"},
              "memory": mem}
    print(f"\nwrote {write_json(a.out, result)}")


if __name__ == "__main__":
    main()
