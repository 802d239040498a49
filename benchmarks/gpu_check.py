"""The device check: paced's GPU path end to end, measured, in one command (docs/gpu.md).

    PYTHONPATH=. python3 benchmarks/gpu_check.py                 # on a CUDA machine: <= 8 min on an H200
    PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json
    python benchmarks/gpu_check.py --cpu                         # the same code at tiny sizes (~1-2 min)
    python benchmarks/gpu_check.py --only c,d                    # some sections only

Writes one JSON (benchmarks/results/gpu_check.json; CPU mode gpu_check_cpu.json; ``--out``) and
prints one table. Sections:

a. The suite's GPU tests: ``pytest -m gpu`` on the files that hold them (skipped without CUDA).
b. bf16 smoke runs of the CLI on configs/smoke/: sft, distill (forward then reverse KL, teacher
   caches on), rl with GRPO, W-REINFORCE and Guide; exit 0, finite losses, a bf16 model saved;
   and an exact resume (6 steps against 3 + ``--resume``, bit-identical weights).
c. Training-step throughput and MFU on a Qwen2-shaped model built from its config (Qwen2.5-0.5B's
   shape on a GPU, random weights), bf16, at two sequence lengths with the same tokens per step:
   an SFT step, a forward-KL distillation step (the teacher, the same shape, runs every step) and
   an RL policy update; MFU against a bf16 matmul peak measured here; where the time goes (a
   profiled step by op category and the GPU's idle share; the chunked KL timed alone).
d. Rollout throughput on the same model: paced's sampler against HF ``generate``, 64 prompts × 8
   samples (512 rows), 256 new tokens, T = 1; and what the sampler's per-step draw costs.
e. Peak memory of the distillation step against the SFT step at the same batch (CUDA:
   ``max_memory_allocated``; CPU: peak RSS of one step in a fresh process).
f. Scale-out: ``accelerate launch`` with configs/accelerate/ddp.yaml and fsdp.yaml, one process,
   on the sft smoke: the sharded code path runs, and its losses equal the unsharded run's.

The formulas, the model and the steps: benchmarks/gpu_check_steps.py; the subprocess runs:
benchmarks/gpu_check_runs.py. Every part has a time cap (``--budget`` for all of them): what
does not fit is recorded as skipped, never overrun. Goals (GPU): SFT and distillation steps at
>= 40 % MFU at 0.5B, bf16, sequence 1024; the distillation step's peak memory <= 1.3x SFT's; the
sampler >= 1.5x HF generate's tokens/s at 512 rows; every command in bf16 with no dtype error or
NaN, and resume exact.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import in_child, machine, parser, table, write_json  # noqa: E402

# what paced's training path imports (math-verify, pyarrow, gguf, vllm ... are optional)
REQUIRED = {"torch": "torch", "numpy": "numpy", "transformers": "transformers", "accelerate": "accelerate",
            "safetensors": "safetensors", "tokenizers": "tokenizers", "yaml": "pyyaml", "rich": "rich"}
MODES = {
    "gpu": dict(shape="QWEN05", seqs=(512, 1024), tokens=16384, warmup=2, steps=6, step_budget=20.0, peak_n=8192,
                rollout=dict(prompts=64, n=8, max_new=256, P=64, repeats=2), rollout_budget=150.0, jobs=4,
                timeout=300.0, budget=470.0),
    "cpu": dict(shape="TINY", seqs=(64, 128), tokens=512, warmup=1, steps=3, step_budget=5.0, peak_n=256,
                rollout=dict(prompts=4, n=2, max_new=16, P=8, repeats=2), rollout_budget=20.0, jobs=2,
                timeout=180.0, budget=300.0),
}
KINDS = ("sft", "distill", "rl")
MFU_GOAL, MEMORY_GOAL, SAMPLER_GOAL = 0.40, 1.3, 1.5
SMOKES = ("sft", "distill", "rl_grpo", "rl_w_reinforce", "rl_guide")
RANK = {"failed": 3, "missed goal": 2, "ok": 0}


class Check:
    """The rows of the table and the sections of the JSON, with the time left."""

    def __init__(self, budget: float):
        self.t0, self.budget, self.rows, self.sections = time.perf_counter(), budget, [], {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def row(self, section: str, check: str, status: str, value: str = "", goal: str = "", met=None) -> None:
        self.rows.append({"section": section, "check": check, "status": status, "value": value, "goal": goal,
                          "met": met})
        print(f"  [{section}] {check}: {status}{' - ' + value if value else ''}", flush=True)

    def close(self, key: str, t0: float, **data) -> None:
        mine = [r["status"] for r in self.rows if r["section"] == key[0]]
        worst = max(mine, key=lambda s: RANK.get(s, 1), default="skipped: nothing ran")
        status = worst if RANK.get(worst, 1) != 1 or all(s == worst for s in mine) else "ok"
        self.sections[key] = {"status": status, "wall_s": time.perf_counter() - t0, **data}


def judged(gpu: bool, met: bool) -> tuple[str, bool | None]:
    """(status, met) of a goal that applies on the GPU only."""
    return ("ok" if met else "missed goal", met) if gpu else ("ok", None)


def gib(b) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


# ---------------------------------------------------------------------------------------------
def throughput(ck: Check, m: dict, S, dev, dtype, gpu: bool) -> dict:
    """Section c (and e's CUDA figures): every step kind at every sequence length."""
    import torch
    shape = getattr(S, m["shape"])
    peak = S.peak_matmul(dev, dtype, m["peak_n"])
    ck.row("c", f"peak: {peak['n']}³ {peak['dtype']} matmul", "ok", f"{peak['flops_per_s'] / 1e12:.1f} TFLOP/s")
    host = torch.device("cpu")
    student0 = S.qwen2(shape, 0, dev, dtype).to(host)
    teacher0 = S.qwen2(shape, 1, dev, dtype).to(host)
    info = {"shape": shape, "parameters": sum(p.numel() for p in student0.parameters()),
            "matmul_params": S.matmul_params(shape), "attn_implementation": student0.config._attn_implementation,
            "peak": peak, "runs": {}}
    for T in m["seqs"]:
        B, P = max(1, m["tokens"] // T), T // 4
        setup = S.Batches(student0, teacher0, B, P, T - P, dev)
        for kind in KINDS:
            name = f"{kind} T={T}"
            if ck.left() < 60 + (m["rollout_budget"] if gpu else 0):
                ck.row("c", name, "skipped: time budget")
                continue
            step = S.make_step(kind, setup)
            r = S.timed(step, dev, m["warmup"], m["steps"], m["step_budget"])
            flops = S.step_flops(shape, kind, B, T, T - P)
            total = sum(flops.values())
            u = S.mfu(total, r["median_s"], peak["flops_per_s"])
            run = {k: v for k, v in r.items() if k != "outs"} | {
                "B": B, "T": T, "P": P, "R": T - P, "flops": flops, "mfu": u, "tokens_per_s": B * T / r["median_s"],
                "host_phases_s": r["outs"][-1].get("phases") if isinstance(r["outs"][-1], dict) else None}
            if T == max(m["seqs"]):
                run["profile"] = S.breakdown(step, dev)
                if kind == "distill":
                    run["kl_alone"] = S.kl_seconds(setup, dtype)
            del step
            S.free(dev)
            info["runs"][name] = run
            goal = f"MFU >= {MFU_GOAL:.0%} at 0.5B, T=1024 (GPU)" if kind != "rl" and T == max(m["seqs"]) else ""
            status, met = judged(gpu, u >= MFU_GOAL) if goal else ("ok", None)
            ck.row("c", name, status, f"B={B}: {r['median_s']:.3f} s/step, {B * T / r['median_s']:,.0f} tok/s, "
                   f"{total / r['median_s'] / 1e12:.2f} TFLOP/s, MFU {u:.1%}", goal, met)
            if "profile" in run:
                pr = run["profile"]
                shares = ", ".join(f"{k} {v / pr['busy_s']:.0%}" for k, v in pr["categories_s"].items() if v)
                idle = f"; GPU idle {pr['idle_share']:.0%} of the step" if pr["idle_share"] is not None else ""
                kl = (f"; the chunked KL alone {run['kl_alone']['median_s']:.3f} s "
                      f"({run['kl_alone']['median_s'] / r['median_s']:.0%} of the step)") if "kl_alone" in run else ""
                ck.row("c", f"{kind} T={T}: where the time goes", "ok", shares + idle + kl)
    del student0, teacher0
    S.free(dev)
    return info


def memory(ck: Check, m: dict, S, info: dict | None, gpu: bool) -> dict:
    """Section e: the distillation step's peak against the SFT step's at the same batch."""
    T = max(m["seqs"])
    B = max(1, m["tokens"] // T)
    if gpu:
        runs = (info or {}).get("runs", {})
        sft, dis = runs.get(f"sft T={T}"), runs.get(f"distill T={T}")
        if not sft or not dis:
            ck.row("e", "distill / SFT peak memory", "skipped: section c did not measure both steps")
            return {}
        ratio = dis["peak_bytes"] / sft["peak_bytes"]
        status, met = judged(True, ratio <= MEMORY_GOAL)
        ck.row("e", f"distill / SFT peak memory, B={B}, T={T}", status,
               f"{gib(dis['peak_bytes'])} / {gib(sft['peak_bytes'])} = {ratio:.2f}x (max_memory_allocated; "
               f"resting {gib(dis['rest_bytes'])} / {gib(sft['rest_bytes'])})", f"<= {MEMORY_GOAL}x", met)
        return {"how": "torch.cuda.max_memory_allocated over the timed steps", "B": B, "T": T, "ratio": ratio,
                "sft": {k: sft[k] for k in ("rest_bytes", "peak_bytes")},
                "distill": {k: dis[k] for k in ("rest_bytes", "peak_bytes")}}
    script = ROOT / "benchmarks" / "gpu_check_steps.py"
    got = {k: in_child(script, ["--_memory", k, "--batch", str(B), "--seq", str(T)], threads=1) for k in ("sft", "distill")}
    if any("error" in v for v in got.values()):
        ck.row("e", "distill / SFT peak memory", "failed", "; ".join(v.get("error", "")[-200:] for v in got.values()))
        return {"rss": got}
    ratio = got["distill"]["peak_mib"] / got["sft"]["peak_mib"]
    ck.row("e", f"distill / SFT peak memory, B={B}, T={T}", "ok",
           f"{got['distill']['peak_mib']:.0f} / {got['sft']['peak_mib']:.0f} MiB = {ratio:.2f}x (peak RSS; step "
           f"deltas {got['distill']['step_delta_mib']:.1f} / {got['sft']['step_delta_mib']:.1f} MiB)",
           f"<= {MEMORY_GOAL}x (GPU)")
    return {"how": "peak RSS of 2 steps in a fresh process (benchmarks/common.py in_child / peak_rss)", "B": B, "T": T,
            "ratio": ratio, "rss": got}


def rollouts(ck: Check, m: dict, S, dev, dtype, gpu: bool) -> dict:
    """Section d: paced's sampler against HF generate, and the sampler's draw."""
    ro = m["rollout"]
    budget = min(m["rollout_budget"], ck.left() - (100 if gpu else 30))
    if budget < 10:
        ck.row("d", "sampler vs HF generate", "skipped: time budget")
        return {}
    model = S.qwen2(getattr(S, m["shape"]), 0, dev, dtype).eval()
    r = S.rollout(model, ro["prompts"], ro["n"], ro["max_new"], ro["P"], ro["repeats"], budget)
    status, met = judged(gpu, r["ratio"] >= SAMPLER_GOAL)
    cut = f", cut from {ro['max_new']} to fit the time cap" if r["max_new_tokens"] < ro["max_new"] else ""
    ck.row("d", f"sampler vs HF generate, {r['rows']} rows", status,
           f"ours {r['ours_tok_s']:,.0f} tok/s, HF {r['hf_tok_s']:,.0f} tok/s: {r['ratio']:.2f}x "
           f"({r['max_new_tokens']} new tokens{cut})", f">= {SAMPLER_GOAL}x HF at 512 rows (GPU)", met)
    draw = S.draw_cost(r["rows"], model.config.vocab_size, dev)
    alt = f", on the device {draw['device_multinomial_s'] * 1e3:.2f} ms" if "device_multinomial_s" in draw else ""
    ck.row("d", "the sampler's draw per decode step", "ok",
           f"host multinomial {draw['host_multinomial_s'] * 1e3:.2f} ms ({draw['host_multinomial_s'] / r['ours_s_per_step']:.0%} "
           f"of our decode step){alt}")
    del model
    S.free(dev)
    return r | {"draw": draw, "static_cache_compile": "not added to paced's sampler: not measured"}


def runs(ck: Check, m: dict, names: list[str], tmp: Path, gpu: bool, jobs: int) -> dict:
    """Sections a, b and f: the subprocess jobs, run together, then judged."""
    import gpu_check_runs as R
    timeout = max(30.0, min(m["timeout"], ck.left() - 5))
    out = R.run_all(names, tmp, "bfloat16", timeout, not gpu, jobs)
    if "pytest" in out:
        p = out["pytest"]
        ck.row("a", "pytest -m gpu (" + ", ".join(p.get("files", [])) + ")", p["status"],
               ", ".join(f"{n} {k}" for k, n in p.get("counts", {}).items()), "all pass (GPU)",
               (p["status"] == "ok") if gpu else None)
    for n in SMOKES:
        if n in out:
            r = out[n]
            extra = f", {r['guided_groups']} groups guided" if "guided_groups" in r else \
                f", stages {'+'.join(r['stages'])}" if r.get("stages") else ""
            loss = f"{r['final_loss']:.4g}" if isinstance(r.get("final_loss"), float) else r.get("final_loss")
            value = r.get("reason") or f"{r['steps']} steps, final loss {loss}, saved {r['saved_dtype']}{extra}"
            ck.row("b", f"{n} bf16", r["status"], value, "exit 0, finite, bf16 saved", r["status"] == "ok")
    if "resume" in out:
        r = out["resume"]
        if r["status"] != "ok":
            ck.row("b", "resume exact (sft bf16, 6 steps vs 3 + --resume)", "failed", r.get("reason", ""), "bit-identical", False)
        else:
            d = r["resumed_vs_full"]
            same = R.weights_diff(tmp / "sft", tmp / "resume_full") if out.get("sft", {}).get("status") == "ok" else None
            r["uninterrupted_twice"] = same
            note = "" if d["equal"] or not same or same["equal"] else \
                " (two uninterrupted runs differ too: the device's kernels are not deterministic)"
            ck.row("b", "resume exact (sft bf16, 6 steps vs 3 + --resume)", "ok" if d["equal"] else "missed goal",
                   ("bit-identical" if d["equal"] else f"{len(d['differing'])}+ tensors differ, max |diff| "
                    f"{d['max_abs_diff']:.3g}") + note, "bit-identical", d["equal"])
    for kind in ("ddp", "fsdp"):
        if kind in out:
            launch_row(ck, kind, out[kind], out.get("sft"), gpu)
    return out


def launch_row(ck: Check, kind: str, r: dict, ref: dict | None, gpu: bool) -> None:
    """Section f's row: the launched run's path and its losses against the unsharded sft run's."""
    check = f"accelerate launch {kind}.yaml, 1 process"
    seen = r.get("prepared") or {}
    want = {"ddp": ("MULTI_GPU",) if gpu else ("MULTI_GPU", "MULTI_CPU"), "fsdp": ("FSDP",)}[kind]
    if r["status"] != "ok":
        return ck.row("f", check, "failed", r.get("reason", ""), "runs; loss = unsharded", False)
    where = f"{seen.get('distributed_type')}, {seen.get('model_class')} / {seen.get('param_class')}"
    if seen.get("distributed_type") not in want:
        if not gpu:
            return ck.row("f", check, "skipped: needs CUDA", f"accelerate ran it as {where} on the CPU")
        return ck.row("f", check, "failed", f"not the {kind} path: {where}", "the sharded path runs", False)
    ours, base = r.get("losses") or [], (ref or {}).get("losses") or []
    if not ours or not base or None in ours + base:
        return ck.row("f", check, "failed", "no losses to compare with the unsharded run", "loss = unsharded", False)
    d1, dn = abs(ours[0] - base[0]), abs(ours[-1] - base[-1])
    ok = d1 <= 1e-2 * max(1.0, abs(base[0])) and dn <= 5e-2 * max(1.0, abs(base[-1]))
    ck.row("f", check, "ok" if ok else "failed",
           f"{where}; loss minus the unsharded run's: step 1 {d1:.2g}, step {len(ours)} {dn:.2g}",
           "step-1 loss = unsharded within bf16 tolerance (1e-2)", ok)


# ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = parser(__doc__, "the CPU mode's tiny sizes (same as --cpu)")
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the default where no CUDA device is)")
    ap.add_argument("--out", default=None, help="a file name in benchmarks/results/, or a path "
                    "(default gpu_check.json; CPU mode gpu_check_cpu.json)")
    ap.add_argument("--only", default="abcdef", help="sections to run, e.g. 'c,d' (default all)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for everything (GPU 470, CPU 300)")
    ap.add_argument("--jobs", type=int, default=None, help="subprocess runs at a time (GPU 4, CPU 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the CPU mode's in-process parts")
    a = ap.parse_args()
    missing = [pip for mod, pip in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"gpu_check: missing Python package(s): {', '.join(missing)} (pip install them; on a machine "
              f"without network carry wheels, docs/gpu.md)", file=sys.stderr)
        return 2
    import torch

    import gpu_check_steps as S
    from paced.models import quiet_hf
    quiet_hf()
    gpu = torch.cuda.is_available() and not (a.cpu or a.quick)
    mode = "gpu" if gpu else "cpu"
    m = MODES[mode]
    dev, dtype = torch.device("cuda" if gpu else "cpu"), torch.bfloat16
    if not gpu:
        torch.set_num_threads(a.threads)
    only = set(a.only.replace(",", ""))
    ck = Check(a.budget or m["budget"])
    info = machine()
    if gpu:
        p = torch.cuda.get_device_properties(dev)
        info["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory,
                          "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda}
    import accelerate
    info["accelerate"] = accelerate.__version__
    print(f"gpu_check ({mode}): {info.get('device', {}).get('name', 'CPU')}, torch {info['torch']}, transformers "
          f"{info['transformers']}, accelerate {info['accelerate']}; sections {''.join(sorted(only))}, "
          f"budget {ck.budget:.0f} s", flush=True)
    result = {"benchmark": "gpu_check", "mode": mode, "machine": info, "settings": m | {"dtype": "bfloat16"}}
    tp = None
    for key, letter, fn in (("c_throughput", "c", lambda: throughput(ck, m, S, dev, dtype, gpu)),
                            ("e_memory", "e", lambda: memory(ck, m, S, tp, gpu)),
                            ("d_rollout", "d", lambda: rollouts(ck, m, S, dev, dtype, gpu))):
        if letter in only:
            t0 = time.perf_counter()
            try:
                data = fn()
            except Exception as e:  # noqa: BLE001 (reported as the section's failure, and the check goes on)
                ck.row(letter, "section", "failed", f"{type(e).__name__}: {e}"[:300])
                data = {"error": f"{type(e).__name__}: {e}"[:2000]}
            tp = data if letter == "c" else tp
            ck.close(key, t0, **data)
    names = (["pytest"] if "a" in only else []) + ([*SMOKES, "resume"] if "b" in only else []) + \
        (["ddp", "fsdp"] if "f" in only else [])
    if "f" in only and "sft" not in names:
        names.insert(0, "sft")                          # the unsharded reference
    if names:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            if ck.left() < 40:
                for n in names:
                    ck.row("b", n, "skipped: time budget")
                out = {}
            else:
                out = runs(ck, m, names, Path(tmp), gpu, a.jobs or m["jobs"])
        for key, letter in (("a_gpu_tests", "a"), ("b_smoke", "b"), ("f_scale_out", "f")):
            if letter in only:
                part = {n: out[n] for n in out if (n == "pytest") == (letter == "a") and
                        ((n in ("ddp", "fsdp")) == (letter == "f"))}
                ck.close(key, t0, runs=part)
    result |= {"sections": ck.sections, "rows": ck.rows, "wall_s": time.perf_counter() - ck.t0,
               "missing": [] if gpu else MISSING_ON_CPU,
               "table_markdown": table(HEAD, cells(ck.rows), markdown=True)}
    if gpu:
        result["missing"] = [f"{r['section']} {r['check']}" for r in ck.rows if r["status"].startswith("skipped")]
    print(f"\ngpu_check ({mode}), {result['wall_s']:.0f} s:", *table(HEAD, cells(ck.rows)), sep="\n")
    print("missing here (a GPU gives them): " + "; ".join(result["missing"]) if result["missing"] else
          "every figure measured")
    out_path = write_json(a.out or ("gpu_check.json" if gpu else "gpu_check_cpu.json"), result)
    print(f"wrote {out_path}")
    return 1 if any(r["status"] == "failed" for r in ck.rows) else 0


HEAD = ["sec", "check", "status", "value", "goal", "met"]
MISSING_ON_CPU = ["the GPU tests (pytest -m gpu) on CUDA", "bf16 smoke runs and the exact resume on CUDA",
                  "the H200's measured bf16 matmul peak", "SFT / distillation / RL step MFU at 0.5B, T 512 and 1024",
                  "sampler vs HF generate tokens/s at 512 rows x 256 new tokens on CUDA",
                  "distillation vs SFT peak GPU memory (max_memory_allocated)",
                  "the one-process FSDP run on CUDA (and DDP over NCCL)"]


def cells(rows: list[dict]) -> list[list[str]]:
    """The table's rows, by section (a..f) in the order each section wrote them."""
    return [[r["section"], r["check"], r["status"], r["value"], r["goal"], {True: "yes", False: "NO", None: ""}[r["met"]]]
            for r in sorted(rows, key=lambda r: r["section"])]


if __name__ == "__main__":
    sys.exit(main())
