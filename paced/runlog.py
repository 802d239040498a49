"""The run directory: config.yaml, metrics.jsonl, summary.json, and the console line.

``RunLog`` appends one JSON object per step to ``metrics.jsonl`` (flushed and fsynced, so a
killed run keeps every finished step), mirrors it to the trackers named in ``run.report_to``,
and prints one concise line every ``logging_steps``. On resume, rows past the resumed step are
dropped so that the file reads as if the run had never stopped.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from rich.console import Console

# Outside a terminal (logs, CI) rich would assume 80 columns and squeeze the tables.
console = Console(stderr=True, highlight=False, soft_wrap=True,
                  width=None if sys.stderr.isatty() else 120)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file in the same directory + ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    """``obj`` as JSON, atomically (``indent=None``: one line, for large result files)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill mid-write: everything before it is intact
    return rows


class RunLog:
    def __init__(self, run_dir: str | Path, report_to=(), logging_steps: int = 10,
                 resume_step: int | None = None, enabled: bool = True, config: dict | None = None):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.logging_steps = logging_steps
        self.metrics_path = self.dir / "metrics.jsonl"
        self.t0 = time.time()
        self.trackers = []
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:  # keep exactly the rows the checkpoint had seen
            kept = [r for r in read_jsonl(self.metrics_path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._f = open(self.metrics_path, "a", encoding="utf-8")
        for name in report_to:
            self.trackers.append(_open_tracker(name, self.dir, config or {}))

    def log(self, step: int, metrics: dict, console_keys: tuple[str, ...] | None = None) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 3), **metrics}
        self._f.write(json.dumps(row, default=_jsonable) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        for t in self.trackers:
            t(step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if step % self.logging_steps == 0 or step == 1:
            keys = console_keys or tuple(k for k, v in metrics.items() if isinstance(v, (int, float)))
            parts = [f"{k} {_fmt(metrics[k])}" for k in keys if k in metrics]
            console.print(f"step {step:>5} | " + " | ".join(parts))

    def summary(self, obj: dict) -> None:
        if self.enabled:
            write_json(self.dir / "summary.json", obj)

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            for t in self.trackers:
                getattr(t, "close", lambda: None)()


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or math.isnan(v) or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4f}"
        return f"{v:.3e}"
    return str(v)


def _open_tracker(name: str, run_dir: Path, config: dict):
    """Optional trackers, imported only when asked for; a missing package is a clear error."""
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            w = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

            def log(step, m):
                for k, v in m.items():
                    w.add_scalar(k, v, step)
            log.close = w.close
            return log
        if name == "wandb":
            import wandb
            r = wandb.init(dir=str(run_dir), config=config, name=run_dir.name)

            def log(step, m):
                r.log(m, step=step)
            log.close = r.finish
            return log
        if name == "trackio":
            import trackio
            trackio.init(project="paced", name=run_dir.name, config=config)

            def log(step, m):
                trackio.log(m, step=step)
            log.close = trackio.finish
            return log
    except ImportError as e:
        hint = "pip install 'paced[trackers]'" if name in ("tensorboard", "wandb") else f"pip install {name}"
        raise RuntimeError(f"run.report_to: {name} is not installed ({e}); "
                           f"{hint} or drop it from run.report_to") from None
    raise ValueError(f"run.report_to: unknown tracker {name!r}")


class Progress:
    """A rich progress bar on the shared console, so log lines print above it, not through it.
    Outside a terminal it draws nothing (no bar spam in log files)."""

    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)
        self.enabled = enabled and console.is_terminal
        if not self.enabled:
            return
        self._p = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                               transient=True)
        self._task = self._p.add_task(desc, total=total, completed=initial)
        self._p.start()

    def update(self, n: int = 1) -> None:
        if self.enabled:
            self._p.advance(self._task, n)

    def close(self) -> None:
        if self.enabled:
            self._p.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
