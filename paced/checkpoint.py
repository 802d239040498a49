"""Atomic checkpoints that resume exactly, and load without unpickling code.

    runs/x/checkpoints/step-120/
        model.safetensors, config.json, tokenizer files   # a loadable HF model directory
        trainer_state.pt    # optimizer, scheduler, torch + python RNG (tensors and primitives only)
        state.json          # step, data position and whatever the trainer adds (human readable)
        checksums.json      # size and SHA-256 of every other file, written last

A checkpoint is written into ``.tmp-step-N`` and renamed to ``step-N`` only when complete
(``os.rename`` of a directory is atomic on POSIX), so ``latest_checkpoint`` never sees a
half-written one; one pruned (``keep``) is renamed to ``.del-step-N`` before it is deleted, so a
kill mid-delete leaves no half-deleted ``step-N`` either (the next save clears both kinds). ``trainer_state.pt`` is read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers: no arbitrary code runs on load.

A checkpoint damaged after it was written (a file deleted, truncated or corrupt) is skipped:
``latest_checkpoint`` returns the newest one that passes ``checkpoint_problem`` (every file there
at the size ``checksums.json`` records, ``state.json`` parses with its step, the safetensors
headers and the zip directory of ``trainer_state.pt`` read), and ``resume_or_fresh`` also checks
every file's SHA-256 (a flipped byte inside the weights changes no header) and falls back further
when loading one still fails (a ``trainer_state.pt`` holding pickled objects other than tensors
is refused, never run), saying which it skipped and why. Checkpoints of older versions, without
``checksums.json``, get the header checks only. A fresh run refuses a directory that holds checkpoints
(``check_fresh``): a later ``--resume`` would otherwise continue the older run.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import torch

from .models import quiet_hf

STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2 ** 22):
            h.update(chunk)
    return h.hexdigest()


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
    for stale in [*root.glob(".tmp-step-*"), *root.glob(".del-step-*")]:   # what a killed run left
        shutil.rmtree(stale, ignore_errors=True)
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
    (tmp / CHECKSUMS).write_text(json.dumps({f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
                                             for f in sorted(tmp.iterdir()) if f.is_file()}, indent=1))
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    gone = root / f".del-step-{step}"
    if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
        os.rename(final, gone)
    os.rename(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(gone, ignore_errors=True)
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            _remove(old)
    return final


def _remove(ckpt: Path) -> None:
    """Rename out of sight (atomic), then delete: a kill mid-delete leaves ``.del-step-N``, which
    the next save clears, never a half-deleted ``step-N``."""
    gone = ckpt.with_name(f".del-{ckpt.name}")
    shutil.rmtree(gone, ignore_errors=True)
    os.rename(ckpt, gone)
    shutil.rmtree(gone, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _checksums(path: Path) -> dict | None:
    """``checksums.json`` as {file: {"bytes", "sha256"}}, None when the checkpoint has none."""
    if not (path / CHECKSUMS).exists():
        return None
    sums = json.loads((path / CHECKSUMS).read_text())
    if not isinstance(sums, dict) or not all(isinstance(v, dict) and isinstance(v.get("bytes"), int)
                                             and isinstance(v.get("sha256"), str) for v in sums.values()):
        raise ValueError(f"{CHECKSUMS} is malformed")
    return sums


def checkpoint_problem(path: str | Path, verify_checksums: bool = False) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, or None. Cheap by default (file
    sizes and headers); ``verify_checksums`` also hashes every file against ``checksums.json``."""
    import zipfile

    from safetensors import safe_open

    path = Path(path)
    try:
        sums = _checksums(path)
        for name, want in (sums or {}).items():
            if (path / name).stat().st_size != want["bytes"]:
                return f"{name} has {(path / name).stat().st_size:,} bytes, not the {want['bytes']:,} written"
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            return "state.json has no step"
        if not (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").is_file():
            return "model.safetensors is missing"
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                st.keys()
        with zipfile.ZipFile(path / "trainer_state.pt") as z:
            z.namelist()
        for name, want in (sums or {}).items() if verify_checksums else ():
            if _sha256(path / name) != want["sha256"]:
                return f"{name} does not match its SHA-256 in {CHECKSUMS} (changed after it was written)"
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except Exception as e:  # OSError, BadZipFile, JSON / safetensors header errors (its own type)
        return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that passes ``checkpoint_problem``."""
    for c in reversed(list_checkpoints(run_dir)):
        if checkpoint_problem(c) is None:
            return c
    return None


def check_fresh(run_dir: str | Path) -> None:
    """A fresh (not ``--resume``) training run must not start over an earlier run's checkpoints."""
    found = list_checkpoints(run_dir)
    if found:
        raise ValueError(f"{Path(run_dir) / 'checkpoints'} holds checkpoints of an earlier run "
                         f"({', '.join(p.name for p in found[-3:])}): continue it with --resume, or "
                         f"choose another run.dir (or delete that directory)")


def resume_or_fresh(run_dir: str | Path, resume: bool, load) -> tuple[Path | None, dict | None]:
    """Where a training run starts: (checkpoint, its state) or (None, None).

    ``resume``: the newest checkpoint that ``load(path) -> state`` accepts, newest first, each
    damaged one reported and skipped (a later one overwrites whatever a failed load had set);
    none at all: a fresh start. If every checkpoint is damaged: an error naming them (a partial
    load may have touched the model). Not ``resume``: ``check_fresh``."""
    from .runlog import console

    if not resume:
        check_fresh(run_dir)
        return None, None
    skipped = []
    for c in reversed(list_checkpoints(run_dir)):
        why = checkpoint_problem(c, verify_checksums=True)
        if why is None:
            try:
                return c, load(c)
            except pickle.UnpicklingError:   # torch's own message advises weights_only=False: never
                why = "trainer_state.pt holds Python objects other than tensors: refused, not unpickled"
            except (OSError, RuntimeError, ValueError, KeyError, EOFError) as e:
                why = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        console.print(f"[yellow]skipping damaged checkpoint {c}: {why}[/]")
        skipped.append(f"{c.name} ({why})")
    if skipped:
        raise ValueError(f"--resume: no complete checkpoint in {Path(run_dir) / 'checkpoints'}: "
                         f"{'; '.join(skipped[:3])}; delete that directory to start fresh")
    return None, None


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
