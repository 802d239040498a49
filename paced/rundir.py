"""What every command does first: the run directory, threads, seeds, the model."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from .runlog import atomic_write_text
from .config import save_config
from .models import build_tiny, load_model_and_tokenizer
from .tasks.answers import set_math_timeout


# Keys a resumed run may change: how it reports, how far it goes, what it evaluates and
# with which engine. Any other change makes the resumed run a different computation: refused.
RESUMABLE = re.compile(r"^(run\.(progress|report_to|threads|dir|math_timeout)|data\.eval.*|engine\..*|regularizer\.ewc_lambda"
                       r"|[a-z_]+\.(logging_steps|save_steps|save_total_limit|max_steps|max_rollouts"
                       r"|eval_.*|stages\[\d+\]\.max_steps))$")


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items() if isinstance(d, dict) else ():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(_flat(x, f"{key}[{i}]."))
            out[key + ".len"] = len(v)
        else:
            out[key] = v
    return out


def check_resume_config(cfg, saved: Path) -> list[str]:
    """The keys whose values differ from the run's saved ``config.yaml`` (``key (old -> new)``);
    a ValueError when any of them is not in ``RESUMABLE``."""
    from .config import RENAMED, rename_keys, safe_yaml, to_dict
    try:   # a run started before a key was renamed saved the old name: compare under the new one
        old = _flat(rename_keys(safe_yaml(saved.read_text()) or {}, RENAMED, str(saved), warn=None))
    except (OSError, ValueError):
        return []                           # unreadable: nothing to compare against
    new = _flat(to_dict(cfg))
    changed = [k for k in new if k in old and old[k] != new[k]]
    shown = [f"{k} ({old[k]!r} -> {new[k]!r})" for k in changed]
    bad = [s for k, s in zip(changed, shown) if not RESUMABLE.match(k)]
    if bad:
        raise ValueError(f"--resume with a config that changes what the run computes: {', '.join(bad[:5])}"
                         f"{' …' if len(bad) > 5 else ''}; resume with the saved {saved} or start a new run.dir")
    return shown


def start_run(cfg, save: bool = True, resume: bool = False) -> Path:
    """Create the run directory, check a resumed run's config against the saved one, save the
    resolved config, set threads and seeds. The main process (``save``) also removes the
    temporaries a killed run's atomic writes left (``.config.yaml.tmp<pid>``, ...)."""
    run_dir = Path(cfg.run.dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run.dir {str(run_dir)!r} is a file, not a directory: choose another run.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = cfg.run.threads or auto_threads()
    if resume and (run_dir / "config.yaml").is_file():
        changed = check_resume_config(cfg, run_dir / "config.yaml")
        if changed and save:
            from .runlog import console
            console.print(f"[yellow]--resume: changed since the run started: {', '.join(changed)}[/]")
        threads = cfg.run.threads or started_threads(run_dir) or threads
    if save:
        for stale in run_dir.glob(".*.tmp*"):   # what a run killed mid-write left (atomic_write_text's)
            if re.fullmatch(r"\..+\.tmp\d+", stale.name) and stale.is_file():
                stale.unlink(missing_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / THREADS_FILE, f"{threads}\n")
    torch.set_num_threads(threads)
    seed_everything(cfg.run.seed)
    set_math_timeout(cfg.run.math_timeout)
    engine = getattr(cfg, "engine", None)
    if engine is not None and engine.backend == "vllm":   # one line, before any model loads
        from . import vllm_engine
        vllm_engine.require()
        vllm_engine.configure(engine.vllm_gpu_memory_utilization, engine.vllm_kv_cache_gb,
                              engine.vllm_max_model_len, engine.vllm_enforce_eager, cfg.run.seed)
    return run_dir


THREADS_FILE = "threads"   # the CPU threads the run computes with (run.threads 0 resolved)


def started_threads(run_dir: Path) -> int | None:
    """The thread count a run started with: a resumed run with run.threads 0 keeps it, because
    another count changes the floating-point sums, and so the weights, of every later step."""
    try:
        return max(1, int((run_dir / THREADS_FILE).read_text().strip()))
    except (OSError, ValueError):
        return None


def auto_threads() -> int:
    """The CPU threads a run uses when ``run.threads`` is 0: the cores this process may run on,
    or 1 when the machine is already busy (1-minute load average at least cores - 0.5). On a
    loaded machine OpenMP workers that spin-wait for a core were measured 10-20x slower than
    one thread; on an idle one all cores win."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0] >= cores - 0.5
    except OSError:  # not available on this platform
        busy = False
    return 1 if busy or cores == 1 else cores


def _whole_model_dir(d: Path) -> bool:
    return all((d / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer_config.json"))


def build_init(preset: str, init: Path, seed: int) -> None:
    """A preset's freshly initialised model, built beside ``init`` and renamed into place, so a
    run killed while building leaves no half-written ``init/`` (one left by an older version is
    rebuilt: it is a pure function of the preset and the seed). A build that fails removes its
    temporary directory; one a killed build left is removed by the next (only the main process
    builds)."""
    import shutil
    tmp = init.with_name(f".{init.name}.tmp-{os.getpid()}")
    for stale in init.parent.glob(f".{init.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        build_tiny(preset, tmp, seed=seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(init, ignore_errors=True)
    os.rename(tmp, init)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model(path: str | None, preset: str | None, init_seed: int, dtype: str, run_dir: Path,
               gradient_checkpointing: bool = False):
    """A model directory, or (no path) a tiny preset built once into ``<run_dir>/init``.

    ``gradient_checkpointing``: Hugging Face's, non-reentrant (it works under DDP and with
    frozen inputs): a training forward keeps only each layer's input and the backward recomputes
    the rest — less activation memory for ~one more forward of compute, the same gradients.
    Eval-mode forwards (the sampler, the teacher) are not affected.
    """
    if path is None:
        init = run_dir / "init"
        if not _whole_model_dir(init):
            build_init(preset, init, init_seed)
        path = str(init)
    model, tok = load_model_and_tokenizer(path, dtype=dtype)
    if gradient_checkpointing:  # transformers >= 5.x calls it activation checkpointing
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tok, path


def model_tag(path: str) -> str:
    """A stable name for a model in the ledger: its resolved directory, or a built-in's name."""
    from .hub import is_builtin
    return str(path) if is_builtin(path) else os.path.realpath(path)
