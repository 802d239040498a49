"""Atomic checkpoints that resume exactly, and load without unpickling code.

    runs/x/checkpoints/step-120/
        model.safetensors, config.json, tokenizer files   # a loadable HF model directory
        trainer_state.pt    # optimizer, scheduler, torch + python RNG (tensors and primitives only)
        state.json          # step, data position and whatever the trainer adds (human readable)

A checkpoint is written into ``.tmp-step-N`` and renamed to ``step-N`` only when complete
(``os.rename`` of a directory is atomic on POSIX), so ``latest_checkpoint`` never sees a
half-written one. ``trainer_state.pt`` is read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers: no arbitrary code runs on load.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from .models import quiet_hf

STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(run_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler,
                    state: dict, model_state_dict=None, keep: int = 0,
                    extra_tensors: dict[str, dict] | None = None) -> Path:
    """Write ``checkpoints/step-<step>`` atomically; prune to the newest ``keep`` (0 = all).

    ``extra_tensors``: {name: state_dict} of other modules (a PPO critic), each written as
    ``<name>.safetensors`` inside the same atomic directory."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    quiet_hf()
    model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state_dict)
    tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state()}, tmp / "trainer_state.pt")
    for name, tensors in (extra_tensors or {}).items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"{name}.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG in place; return ``state.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = load_file(path / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"checkpoint {path}: weights do not match the model "
                           f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]})")
    trainer = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(trainer["optimizer"])
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    return json.loads((path / "state.json").read_text())
