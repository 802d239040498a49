"""The subprocess parts of benchmarks/gpu_check.py: the suite's GPU tests, smoke runs of the CLI in
bf16, an exact resume, and one-process ``accelerate launch`` runs with the DDP and FSDP configs.

Every run is ``python -m paced <command>`` on a smoke config of configs/smoke/ (tiny ``nano``
models, seconds each) with the dtype overrides ``DTYPE`` and ``COMMON``, in a fresh run directory;
several run at once (``--jobs``). A run passes when it exits 0, every metrics row's loss / kl /
grad_norm is finite, and its saved model is in the dtype asked for.

Resume (``resume_job``): the sft smoke run again (6 steps, checkpoints at 3 and 6), then a copy
of it with the step-6 checkpoint, the final model and summary removed, continued with
``--resume`` from step 3: its final weights must equal the uninterrupted run's bit for bit. Its
uninterrupted run is also compared with the sft smoke run's (two identical runs: where these
differ, the device's kernels are not deterministic and resume cannot be bit-exact either).

Scale-out (``launch_job``): ``accelerate launch --config_file configs/accelerate/<ddp|fsdp>.yaml``
with one process, running this file with ``--launched``, which records what ``Accelerator.prepare``
returned (the distributed type, the model's and its parameters' classes: FSDP2 shards into
DTensors) and then calls paced's CLI unchanged; its logged losses are compared with the unsharded
sft smoke run's.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"
ACCELERATE = ROOT / "configs" / "accelerate"
LAUNCHED = "GPU_CHECK_LAUNCHED "            # the line --launched prints (stderr), then JSON
DTYPE = {"sft": ["model.dtype={d}"], "distill": ["student.dtype={d}", "teacher.dtype={d}"], "rl": ["policy.dtype={d}"]}
COMMON = ["run.threads=1", "run.progress=false", "run.logging_steps=1"]
HINTED = "data.train=[{source: add, n: 32, difficulty: [1, 2], seed: 0, hint_level: 1}]"
SMOKES = {  # name: (command, extra overrides)
    "sft": ("sft", ["run.save_steps=3"]),
    "distill": ("distill", ["distill.teacher_cache_mib=1024"]),   # stages forward_kl, reverse_kl; caches on
    "rl_grpo": ("rl", ["rl.advantage=grpo"]),
    "rl_w_reinforce": ("rl", ["rl.advantage=w_reinforce"]),
    "rl_guide": ("rl", ["rl.advantage=grpo", "rl.guide.enabled=true", HINTED]),
}
FINITE_KEYS = ("loss", "kl", "grad_norm")


def env(cpu: bool) -> dict:
    """The children's environment: this checkout first on PYTHONPATH; no GPU in CPU mode."""
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
             PYTHONUNBUFFERED="1")
    if cpu:
        e["CUDA_VISIBLE_DEVICES"] = ""
    return e


def run(cmd: list[str], timeout: float, cpu: bool) -> dict:
    """rc, wall seconds and the last lines of stderr of one command (rc 124 past ``timeout``)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env(cpu), capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:      # its output may come back as bytes
        rc, out, err = 124, *(x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
    return {"rc": rc, "wall_s": time.perf_counter() - t0, "stdout": out, "stderr": err,
            "tail": "\n".join((err or out).strip().splitlines()[-8:])}


def paced_cmd(command: str, run_dir: Path, dtype: str, extra: list[str], *more: str) -> list[str]:
    overrides = [o.format(d=dtype) for o in DTYPE[command]] + COMMON + extra
    return [sys.executable, "-m", "paced", command, "--config", str(SMOKE / f"{command}.yaml"),
            "--run-dir", str(run_dir), *overrides, *more]


def rows_of(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def saved_dtype(run_dir: Path) -> str | None:
    try:
        cfg = json.loads((run_dir / "model" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("dtype") or cfg.get("torch_dtype")


def check_run(res: dict, run_dir: Path, dtype: str) -> dict:
    """``res`` with its metrics rows judged: status ok / failed (with the reason)."""
    rows = rows_of(run_dir)
    bad = [f"step {r.get('step')} {k}={r[k]}" for r in rows for k in FINITE_KEYS
           if k in r and not (isinstance(r[k], (int, float)) and math.isfinite(r[k]))]
    got = saved_dtype(run_dir)
    why = (f"exit {res['rc']}: {res['tail'][-300:]}" if res["rc"] != 0 else
           "no metrics rows" if not rows else f"not finite: {', '.join(bad[:3])}" if bad else
           f"saved dtype {got}, not {dtype}" if got != dtype else None)
    out = {k: res[k] for k in ("rc", "wall_s")} | {
        "status": "ok" if why is None else "failed", "steps": len(rows), "saved_dtype": got,
        "final_loss": rows[-1].get("loss") if rows else None, "losses": [r.get("loss") for r in rows],
        "non_finite": bad[:10]}
    if why:
        out["reason"] = why
    return out


def smoke_job(name: str, tmp: Path, dtype: str, timeout: float, cpu: bool) -> dict:
    command, extra = SMOKES[name]
    d = tmp / name
    out = check_run(run(paced_cmd(command, d, dtype, extra), timeout, cpu), d, dtype)
    rows = rows_of(d)
    if name == "rl_guide":     # the guide path ran: groups replaced by hinted rollouts
        guided = sum(r.get("guide/guided_groups", 0) or 0 for r in rows)
        out["guided_groups"] = guided
        if out["status"] == "ok" and not guided:
            out.update(status="failed", reason="Guide replaced no group (its code path did not run)")
    if name == "distill":
        out["stages"] = sorted({r.get("stage") for r in rows if r.get("stage")})
    return out


def weights_diff(a: Path, b: Path) -> dict:
    """Tensors that differ between two saved models and the largest |difference|."""
    from safetensors.torch import load_file
    x, y = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    if x.keys() != y.keys():
        return {"equal": False, "differing": ["(different tensor names)"], "max_abs_diff": None}
    diff = {k: float((x[k].float() - y[k].float()).abs().max()) for k in x}
    differing = sorted(k for k, v in diff.items() if v != 0 or not math.isfinite(v))
    return {"equal": not differing, "differing": differing[:5], "tensors": len(x),
            "max_abs_diff": max(diff.values(), default=0.0)}


def resume_job(tmp: Path, dtype: str, timeout: float, cpu: bool) -> dict:
    """Uninterrupted 6 steps, then the same run resumed from its step-3 checkpoint."""
    command, extra = SMOKES["sft"]
    full, resumed = tmp / "resume_full", tmp / "resume_from_3"
    first = check_run(run(paced_cmd(command, full, dtype, extra), timeout, cpu), full, dtype)
    if first["status"] != "ok":
        return {"status": "failed", "reason": f"the uninterrupted run: {first.get('reason')}", "full": first}
    shutil.copytree(full, resumed)
    for gone in (resumed / "checkpoints" / "step-6", resumed / "model"):
        shutil.rmtree(gone)
    (resumed / "summary.json").unlink(missing_ok=True)
    res = run(paced_cmd(command, resumed, dtype, extra, "--resume"), timeout, cpu)
    second = check_run(res, resumed, dtype)
    if second["status"] != "ok":
        return {"status": "failed", "reason": f"the resumed run: {second.get('reason')}", "full": first}
    if "resumed from" not in res["stderr"] + res["stdout"]:
        return {"status": "failed", "reason": "the resumed run did not say it resumed", "full": first}
    return {"status": "ok", "full": first, "resumed": second, "resumed_vs_full": weights_diff(full, resumed),
            "steps_logged": [r["step"] for r in rows_of(resumed)]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_job(kind: str, tmp: Path, dtype: str, timeout: float, cpu: bool) -> dict:
    """``accelerate launch`` with configs/accelerate/<kind>.yaml, one process, on the sft smoke."""
    command, extra = SMOKES["sft"]
    d = tmp / f"launch_{kind}"
    inner = paced_cmd(command, d, dtype, extra)[3:]                   # after "python -m paced"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / f"{kind}.yaml"),
           "--num_processes", "1", "--main_process_port", str(free_port()), str(Path(__file__)), "--launched", *inner]
    res = run(cmd, timeout, cpu)
    out = check_run(res, d, dtype)
    seen = [json.loads(line[len(LAUNCHED):]) for line in res["stderr"].splitlines() if line.startswith(LAUNCHED)]
    out["prepared"] = seen[0] if seen else None
    return out


def gpu_test_files() -> list[str]:
    """The test files that hold tests marked gpu (collecting the whole suite would import every
    test module's optional packages)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if re.search(r"mark\.gpu\b", p.read_text()))


def pytest_job(timeout: float, cpu: bool) -> dict:
    """``pytest -m gpu`` on those files: the counts of its summary line."""
    import importlib.util
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped: pytest not installed"}
    files = gpu_test_files()
    res = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files], timeout, cpu)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", res["stdout"])}
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    if res["rc"] not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        status = "failed"
    elif not ran:
        status = "skipped: no CUDA" if cpu else "failed"
    else:
        status = "ok"
    return {"status": status, "files": files, "counts": counts, "rc": res["rc"], "wall_s": res["wall_s"],
            **({"tail": res["stdout"][-1500:]} if status == "failed" else {})}


def run_all(names: list[str], tmp: Path, dtype: str, timeout: float, cpu: bool, jobs: int) -> dict:
    """The jobs ``names`` (pytest, a SMOKES name, resume, ddp, fsdp), ``jobs`` at a time."""
    def one(name: str) -> dict:
        t0 = time.perf_counter()
        try:
            if name == "pytest":
                out = pytest_job(timeout, cpu)
            elif name == "resume":
                out = resume_job(tmp, dtype, timeout, cpu)
            elif name in ("ddp", "fsdp"):
                out = launch_job(name, tmp, dtype, timeout, cpu)
            else:
                out = smoke_job(name, tmp, dtype, timeout, cpu)
        except Exception as e:  # noqa: BLE001 (kept: the check reports it as failed)
            out = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:400]}
        return out | {"job_wall_s": time.perf_counter() - t0}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(names, pool.map(one, names)))


def launched(argv: list[str]) -> int:
    """Inside ``accelerate launch``: say what ``Accelerator.prepare`` returned, then run paced."""
    import accelerate

    real = accelerate.Accelerator.prepare

    def prepare(self, *args, **kw):
        out = real(self, *args, **kw)
        model = out[0] if isinstance(out, tuple) else out
        param = next(model.parameters(), None)
        print(LAUNCHED + json.dumps({"distributed_type": str(self.distributed_type).split(".")[-1],
                                     "num_processes": self.num_processes, "model_class": type(model).__name__,
                                     "param_class": type(param).__name__, "device": str(self.device)}),
              file=sys.stderr, flush=True)
        return out
    accelerate.Accelerator.prepare = prepare
    from paced.cli import main
    return main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launched"]:
        sys.path.insert(0, str(ROOT))
        sys.exit(launched(sys.argv[2:]))
    print(__doc__)
