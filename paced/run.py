"""What every command does first: the run directory, threads, seeds, the model."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .config import save_config
from .models import build_tiny, load_model_and_tokenizer


def start_run(cfg, save: bool = True) -> Path:
    """Create the run directory, save the resolved config, set threads and seeds."""
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if save:
        save_config(cfg, run_dir / "config.yaml")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    return run_dir


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
        if not (init / "config.json").is_file():
            build_tiny(preset, init, seed=init_seed)
        path = str(init)
    model, tok = load_model_and_tokenizer(path, dtype=dtype)
    if gradient_checkpointing:  # transformers >= 5.x calls it activation checkpointing
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tok, path


def model_tag(path: str) -> str:
    """A stable name for a model in the ledger: its resolved directory."""
    return os.path.realpath(path)
