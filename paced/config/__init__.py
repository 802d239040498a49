"""Typed configs: YAML files (``include:`` others) + ``key=value`` overrides, validated before any
model loads.

Each command has one root dataclass made of small sections. The sections several commands share
(``model``, ``data``, ``sampling``, ``passrate``, ``engine``, ``optim``, ``run``, ...) are in
``sections.py``; the trainers' roots and their own sections in ``trainers.py``; the other commands'
in ``commands.py``. ``load_config(Root, path, overrides)`` reads the YAML, applies the overrides
(values parsed as YAML, so ``data.train=[{source: add, n: 10}]`` and ``eval.ks=[1,4]`` work), and
builds the dataclasses field by field. An unknown key, a wrong type or an out-of-range value
raises ``ConfigError`` naming the dotted key, with the nearest valid key suggested for typos;
then the size caps below, then each section's own ``check`` (its cross-field rules, next to its
fields). Keys renamed since 0.1 (``RENAMED``) still work, with a warning naming the new key.
Names follow TRL where TRL has one.
"""
from __future__ import annotations

import dataclasses
import os

from .commands import (CONTINUAL_METHODS, ContinualCfg, ContinualConfig, DemoCfg, DemoConfig,  # noqa: F401
                       EvalConfig, LedgerConfig, PassrateConfig, SNRCfg, SNRConfig)
from .sections import (ClasspCfg, DataCfg, DataSource, EngineCfg, EvalCfg, LedgerCfg, ModelCfg,  # noqa: F401
                       OptimCfg, PassrateCfg, RegularizerCfg, RunCfg, SamplingCfg, TeacherCfg, TrainRunCfg)
from .tools import (ConfigError, all_keys, check_choice, describe, load_raw, option,  # noqa: F401
                    parse_overrides, run_checks, to_dict)
from .trainers import (DistillCfg, DistillConfig, GuideCfg, PPOCfg, RLCfg, RLConfig, SFTConfig,  # noqa: F401
                       StageCfg, TrainCfg)
from .yamlfiles import rename_keys, safe_yaml, save_config  # noqa: F401

# old key -> new key, or (new key, {old value: new value}) (paced 0.1's names and 0.2's
# rl.prompt_weighting; they work, with a warning, until 0.3)
_SAMPLING = {f"{sec}.{old}": f"sampling.{new}" for sec, names in (
    ("rl", ("temperature", "top_p", "top_k", "max_completion_length", "sampling_batch_size")),
    ("eval", ("temperature", "top_p", "top_k", "max_completion_length", "batch_size")),
    ("distill", ("max_completion_length", "passrate_temperature", "sampling_batch_size")),
    ("snr", ("max_completion_length", "passrate_temperature"))) for old in names
    for new in [{"sampling_batch_size": "batch_size", "passrate_temperature": "temperature"}.get(old, old)]}
_SAVING = {f"{sec}.{k}": f"run.{k}" for sec in ("train", "distill", "rl")
           for k in ("logging_steps", "save_steps", "save_total_limit")}
RENAMED = {
    **_SAMPLING, **_SAVING,
    "distill.num_generations": "passrate.num_generations", "snr.num_generations": "passrate.num_generations",
    "rl.guide": "rl.guide.enabled", "rl.hint_template": "rl.guide.hint_template",
    **{f"rl.guide_{k}": f"rl.guide.{k}" for k in ("shaping", "quantile", "gamma", "power")},
    **{f"rl.{k}": f"rl.ppo.{k}" for k in ("vf_coef", "cliprange_value", "gamma", "lam", "whiten_advantages")},
    **{f"optim.classp_{k}": f"optim.classp.{k}" for k in ("p", "threshold", "eps")},
    **{f"continual.{m}_{k}": f"continual.{m}.{k}" for m, ks in (
        ("sgd", ("lr",)), ("adam", ("lr",)), ("ewc", ("lr", "optimizer", "mode", "decay")),
        ("classp_p1", ("lr", "threshold", "eps")), ("classp_p2", ("lr", "threshold", "eps")),
        ("mas", ("lr", "optimizer", "alpha"))) for k in ks},
    "continual.ewc_lambda": "continual.ewc.ewc_lambda", "continual.mas_lambda": "continual.mas.mas_lambda",
    "rl.prompt_weighting": ("rl.prompt_selection", {"none": "uniform"}),   # (new key, old value -> new value)
    **{k: f"demo.{k}" for k in ("teacher_preset", "student_preset", "teacher_steps", "student_steps",
                                "student_train", "passrate_pool", "distill_families", "distill_target",
                                "distill_pool", "rl_families", "rl_pool")},
}

# Sizes past these are refused before any work (a typo like 10**12 would hang or exhaust memory):
# fields whose name ends in one of the keys, anywhere in the config.
SIZE_CAPS = {"batch_size": 65_536, "num_generations": 4_096, "max_completion_length": 131_072,
             "max_length": 131_072, "max_prompt_length": 131_072, "eval_n": 4_096,
             "gradient_accumulation_steps": 65_536}
STEP_SEQUENCES_CAP = 1_048_576  # per_device_train_batch_size x gradient_accumulation_steps, one step
SYNTHETIC_N_CAP = 1_000_000     # problems one synthetic source may generate
EVAL_N_CAP = 4_096              # samples per problem in eval / passrate


def check_sizes(obj, prefix: str = "") -> None:
    """ConfigError for a size past ``SIZE_CAPS`` (or a step's sequences, a source's problems, the
    threads) anywhere in ``obj``."""
    if dataclasses.is_dataclass(obj):
        per, acc = getattr(obj, "per_device_train_batch_size", 1), getattr(obj, "gradient_accumulation_steps", 1)
        if isinstance(per, int) and isinstance(acc, int) and per * acc > STEP_SEQUENCES_CAP:
            raise ConfigError(f"{prefix}gradient_accumulation_steps: {per:,} x {acc:,} sequences per step is "
                              f"more than paced accepts ({STEP_SEQUENCES_CAP:,}); a typo?")
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if isinstance(value, int) and not isinstance(value, bool):
                cap = next((c for end, c in SIZE_CAPS.items() if f.name.endswith(end)), None)
                if key in ("eval.n", "passrate.num_generations"):
                    cap = EVAL_N_CAP
                if cap is not None and value > cap:
                    raise ConfigError(f"{key}: {value:,} is more than paced accepts ({cap:,}); "
                                      f"a typo? (sizes past this cannot fit in memory)")
                if key == "run.threads" and value > 4 * (os.cpu_count() or 1):
                    cores = os.cpu_count() or 1
                    raise ConfigError(f"run.threads: {value:,} threads on a machine with {cores} "
                                      f"cores; use at most {4 * cores} (0 = auto)")
            check_sizes(value, key + ".")
    elif isinstance(obj, list):
        for i, x in enumerate(obj):
            check_sizes(x, f"{prefix[:-1]}[{i}].")
            src_n = getattr(x, "n", None)
            if getattr(x, "source", None) is not None and isinstance(src_n, int) and src_n > SYNTHETIC_N_CAP:
                raise ConfigError(f"{prefix[:-1]}[{i}].n: {src_n:,} problems; a source holds at most "
                                  f"{SYNTHETIC_N_CAP:,}")


def load_config(root, path=None, overrides=(), run_dir=None):
    """Build a ``root`` config from a YAML file, ``key=value`` overrides and --run-dir, and
    validate it: types, ranges and unknown keys, the size caps, then every section's ``check``."""
    cfg = load_raw(root, path, overrides, run_dir, RENAMED)
    check_sizes(cfg)
    run_checks(cfg)
    return cfg
