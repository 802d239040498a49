"""Reward functions for ``paced rl``: the task verifiers by default, or your own.

    paced rl --config configs/rl/grpo.yaml rl.reward_funcs='[verifier, my_rewards.py:length_penalty]'

A reward function has TRL's signature ``fn(prompts, completions, **kwargs) -> list[float | None]``
with one entry per completion; the keyword arguments (``ARGUMENTS``) are TRL's
``completion_ids`` (token ids, one list per completion) and ``trainer_state`` (None: paced has no
TrainerState) and the per-row dataset columns ``answer``, ``example`` (the ``paced.tasks.Example``),
``source`` and ``id``. A function without ``**kwargs`` gets only the arguments it names; one that
requires an argument paced cannot give is refused when it loads, naming the argument.
``rl.reward_funcs`` names them: ``verifier`` (``REWARDS``),
``package.module:function`` or ``path/to/file.py:function`` (``load_reward_function``).

``compute_rewards`` calls every function and sums the rewards with ``rl.reward_weights``
(1 each by default). Each result is checked, and a bad one is a ``ValueError`` naming the function
(and the row): a list or tuple of the right length, whose entries are real numbers (``bool``
counts as 0 / 1, numpy scalars are fine) or ``None``. ``None`` means "this function has no reward
for this row" (as in TRL): the row's reward is the weighted sum of the other functions' rewards,
and a row that no function rewards is an error. NaN / inf rewards are errors too.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .tasks import Example, verify

RewardFn = Callable[..., list]
ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "answer", "example",
             "source", "id")


def _parameters(fn) -> list | None:
    """``fn``'s parameters, or None for a callable without a signature (called as is)."""
    import inspect
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


def check_signature(fn, spec: str) -> None:
    """A ValueError naming the first required parameter of ``fn`` that paced does not pass."""
    for p in _parameters(fn) or ():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is not p.empty or p.name in ARGUMENTS:
            continue
        raise ValueError(f"reward function {spec!r} requires an argument {p.name!r} that paced does not "
                         f"pass (it passes {', '.join(ARGUMENTS)}); give it a default or take **kwargs")


def _accepted(fn) -> set[str] | None:
    """The keyword names ``fn`` takes, or None when it takes **kwargs (or has no signature)."""
    params = _parameters(fn)
    if params is None or any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def verifier_reward(prompts: list[str], completions: list[str], example: list[Example],
                    **kwargs) -> list[float]:
    """1.0 where the example's own verifier accepts the completion, else 0.0 (the default)."""
    return [float(verify(c, e)) for c, e in zip(completions, example)]


REWARDS: dict[str, RewardFn] = {"verifier": verifier_reward}


# ---------------------------------------------------------------------------------------------
# Loading "module:function" / "file.py:function"
# ---------------------------------------------------------------------------------------------
def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _import_file(where: str, spec: str):
    """The module defined by the Python file ``where`` (relative to the working directory)."""
    path = Path(where).expanduser()
    if not path.is_file():
        raise ValueError(f"reward function {spec!r}: file {str(path)!r} not found "
                         f"(looked in {Path.cwd()})")
    name = f"paced_reward_{path.stem}_{abs(hash(str(path.resolve())))}"
    ispec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(ispec)
    sys.modules[name] = module  # dataclasses / pickling inside the file look themselves up here
    try:
        ispec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"reward function {spec!r}: running {str(path)!r} failed: "
                         f"{type(e).__name__}: {e}") from e
    return module


def _import_module(where: str, spec: str):
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        raise ValueError(f"reward function {spec!r}: module {where!r} not found ({e}); "
                         f"use 'package.module:function' or 'path/to/file.py:function'") from e
    except Exception as e:
        raise ValueError(f"reward function {spec!r}: importing {where!r} failed: "
                         f"{type(e).__name__}: {e}") from e


def load_reward_function(spec: str) -> RewardFn:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` -> the function.

    Any problem (no ``:``, missing module or file, an import error, a missing attribute, not
    callable) is a ``ValueError`` naming ``spec``.
    """
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"reward function {spec!r}: expected 'package.module:function' "
                         f"or 'path/to/file.py:function'")
    module = _import_file(where, spec) if _is_file_spec(where) else _import_module(where, spec)
    fn = module
    for part in attr.split("."):  # "module:Class.method" works too
        if not hasattr(fn, part):
            raise ValueError(f"reward function {spec!r}: {where!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r}: {attr!r} is a {type(fn).__name__}, "
                         f"not a function")
    check_signature(fn, spec)
    return fn


# ---------------------------------------------------------------------------------------------
# Calling and checking
# ---------------------------------------------------------------------------------------------
def function_name(fn) -> str:
    """``module.qualname`` of a reward function, for error messages and logs."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else name


def _as_reward(value, fn, row: int) -> float:
    """One entry of a reward function's result -> float (NaN for None), or a ValueError."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, numbers.Real):
        raise ValueError(f"reward function {function_name(fn)}: row {row} is {value!r} "
                         f"({type(value).__name__}), not a number or None")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"reward function {function_name(fn)}: row {row} is {value!r}; "
                         f"rewards must be finite (return None for 'no reward')")
    return x


def call_reward_function(fn: RewardFn, prompts: list[str], completions: list[str],
                         examples: list[Example], completion_ids: list[list[int]] | None = None) -> list[float]:
    """Call ``fn`` with TRL's arguments and check its result: N floats, NaN where it gave None."""
    given = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
             "trainer_state": None, "answer": [e.answer for e in examples], "example": list(examples),
             "source": [e.source for e in examples], "id": [e.id for e in examples]}
    names = _accepted(fn)
    try:
        out = fn(**(given if names is None else {k: v for k, v in given.items() if k in names}))
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise ValueError(f"reward function {function_name(fn)} cannot be called with paced's arguments "
                         f"({', '.join(ARGUMENTS)}): {e}") from None
    if not isinstance(out, (list, tuple)):
        raise ValueError(f"reward function {function_name(fn)} returned a {type(out).__name__}; "
                         f"return a list with one float (or None) per completion")
    if len(out) != len(completions):
        raise ValueError(f"reward function {function_name(fn)} returned {len(out)} rewards for "
                         f"{len(completions)} completions")
    return [_as_reward(v, fn, i) for i, v in enumerate(out)]


def reward_table(funcs: list[RewardFn], prompts: list[str], completions: list[str],
                 examples: list[Example], completion_ids: list[list[int]] | None = None) -> torch.Tensor:
    """Every function's checked rewards, (N, F) in fp64, NaN where a function returned None."""
    if not (len(prompts) == len(completions) == len(examples)):
        raise ValueError(f"compute_rewards: {len(prompts)} prompts, {len(completions)} "
                         f"completions and {len(examples)} examples; give one of each per row")
    cols = [call_reward_function(fn, prompts, completions, examples, completion_ids) for fn in funcs]
    return torch.tensor(cols, dtype=torch.float64).reshape(len(funcs), len(completions)).T


def compute_rewards(funcs: list[RewardFn], weights: list[float] | None, prompts: list[str],
                    completions: list[str], examples: list[Example],
                    completion_ids: list[list[int]] | None = None) -> torch.Tensor:
    """Σ_f w_f · r_f per completion, skipping functions that returned None for that row: (N,) fp32."""
    if not funcs:
        raise ValueError("compute_rewards: no reward functions")
    w = torch.ones(len(funcs), dtype=torch.float64) if weights is None else \
        torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if len(w) != len(funcs):
        raise ValueError(f"compute_rewards: {len(w)} reward weights for {len(funcs)} reward "
                         f"functions ({', '.join(function_name(f) for f in funcs)})")
    table = reward_table(funcs, prompts, completions, examples, completion_ids)     # (N, F)
    missing = table.isnan().all(dim=1)                               # (N,)
    if missing.any():
        row = int(missing.nonzero()[0])
        raise ValueError(f"reward functions {', '.join(function_name(f) for f in funcs)} all "
                         f"returned None for row {row} (example {examples[row].id!r}); at least "
                         f"one must reward every completion")
    return (table.nan_to_num(0.0) * w).sum(dim=1).float()           # (N,)
