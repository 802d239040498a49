"""What the speed benchmarks share: is TRL installed, and a record of the machine they ran on."""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def have_trl() -> bool:
    try:
        import trl  # noqa: F401
        return True
    except ImportError:
        return False


def machine() -> dict:
    """Date, platform, CPU, library versions, load average and git commit, for the results JSON."""
    import torch
    import transformers
    info = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if have_trl():
        import trl
        info["trl"] = trl.__version__
    else:
        info["trl"] = None
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                                     capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def proc_memory() -> dict:
    """This process's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out
