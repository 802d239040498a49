"""What a trainer reads p̂ from: the ledger rows of this run and of the model it started from
(``ledger.parent``), discounted by age (``ledger.recency``), the same on every process.

``link_parent`` records the run's parents in the ledger once, at the start; ``read_counts`` is
the per-step read: ``Ledger.discounted_counts`` on the main process (the only one whose ledger
holds the parents' rows), broadcast to the others.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ledger import Ledger
from ..rundir import model_tag

RUN_TAGS = ("policy", "student")   # the ledger tags a paced rl / distill run writes: "<run dir>:<tag>"


@dataclass(frozen=True)
class Recency:
    """How old rows count (``posterior.RECENCY``): the ledger section's four numbers."""
    rule: str
    forget_by: str
    half_life: float
    window: float

    @classmethod
    def of(cls, ledger_cfg) -> Recency:
        return cls(ledger_cfg.recency, ledger_cfg.forget_by, ledger_cfg.half_life, ledger_cfg.window)


def ledger_parents(ledger: Ledger, model_path: str) -> list[tuple[str, int]]:
    """[(tag, step)] the ledger holds for the model directory a run loads: the directory itself
    (rows of ``paced passrate`` / ``eval`` on it, at their last step) and the paced run that
    wrote it (``<run>/model``: that run's last step; ``<run>/checkpoints/step-N``: step N)."""
    out, own = [], model_tag(model_path)
    if (at := ledger.max_step(own)) is not None:
        out.append((own, at))
    p = Path(os.path.realpath(model_path))
    m = re.fullmatch(r"step-(\d+)", p.name)
    run, step = (p.parent, None) if p.name == "model" else \
        (p.parent.parent, int(m.group(1))) if m and p.parent.name == "checkpoints" else (None, None)
    for name in RUN_TAGS if run is not None else ():
        tag = f"{run}:{name}"
        if (at := ledger.max_step(tag)) is not None:
            out.append((tag, at if step is None else step))
    return out


def link_parent(ledger: Ledger, tag: str, parent: str | None, model_path: str | None) -> list[str]:
    """Record ``tag``'s parents (``ledger.parent``: None, "auto" or a tag); returns their tags.
    A named parent with no rows in this ledger is an error (a typo would read nothing)."""
    if parent is None:
        return []
    if parent == "auto":
        found = ledger_parents(ledger, model_path) if model_path else []
    else:
        at = ledger.max_step(parent)
        if at is None:
            raise ValueError(f"ledger.parent: {parent!r} has no rows in {ledger.path} "
                             f"(`paced ledger {ledger.path}` lists its models)")
        found = [(parent, at)]
    for p, at in found:
        if p != tag:
            ledger.set_parent(tag, p, at)
    return [p for p, _ in found if p != tag]


def read_counts(accelerator, ledger: Ledger, tag: str, ids: list[str], now: int, rec: Recency,
                exclude: tuple[str, int] | None = None):
    """(c_eff, k_eff), (len(ids),) float each: the discounted counts of ``tag`` and its parents
    up to step ``now`` (``exclude``: as ``Ledger.discounted_counts``), read by the main process
    and broadcast (every process gets the same)."""
    out = [None]
    if accelerator.is_main_process:
        out = [np.stack(ledger.discounted_counts(tag, ids, now, rec.rule, rec.half_life, rec.window,
                                                 rec.forget_by, exclude=exclude))]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        broadcast_object_list(out)
    return out[0][0], out[0][1]
