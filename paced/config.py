"""Typed, flat configs: YAML file + ``key=value`` overrides, validated before any model loads.

Each command has one root dataclass made of small sections (``model``, ``data``, ``sampling``,
``optim``, ``train``, ``run``, ...). ``load_config(Root, path, overrides)`` reads the YAML,
applies the overrides (values parsed as YAML, so ``data.train=[{source: add, n: 10}]`` and
``eval.ks=[1,4]`` work), and builds the dataclasses field by field. An unknown key, a wrong
type or an out-of-range value raises ``ConfigError`` naming the dotted key, with the nearest
valid key suggested for typos. Names follow TRL where TRL has one.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    pass


def F(default, help: str, *, min=None, max=None, choices=None):
    """A config field: default, help text and optional range/choices checked at load."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(x):
    import copy
    return copy.deepcopy(x)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelCfg:
    path: str | None = F(None, "local Hugging Face model directory (config.json + weights + tokenizer)")
    preset: str | None = F(None, "build a tiny Llama from scratch when path is empty",
                           choices=("nano", "tiny", "small", "medium", "base15m"))
    init_seed: int = F(0, "initialisation seed for a preset model", min=0)
    dtype: str = F("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))


@dataclass
class DataSource:
    source: str = F("add", "synthetic family (add, sub, mul1, modular, countdown), 'champ', or a "
                    ".jsonl/.parquet path")
    n: int = F(0, "synthetic: number of examples; files: keep the first n rows (0 = all)", min=0)
    difficulty: list[int] = F([1, 4], "synthetic: [lo, hi] difficulty knob (inclusive)")
    seed: int = F(0, "synthetic: generator seed (use different seeds for train and eval)", min=0)
    hint_level: int = F(1, "synthetic: hint strength 0 (none) .. 3", min=0, max=3)
    verifier: str = F("auto", "how answers are checked; auto = the family's own, 'math' for files",
                      choices=("auto", "exact", "numeric", "math", "countdown"))
    on_error: str = F("raise", "bad rows: raise (naming file:line) or skip and count",
                      choices=("raise", "skip"))
    prompt_field: str | None = F(None, "column holding the prompt (default: prompt/question/problem)")
    answer_field: str | None = F(None, "column holding the answer (default: answer/final_answer)")
    hint_field: str | None = F(None, "column holding the hint (default: hint/hints)")
    solution_field: str | None = F(None, "column holding the worked solution (default: solution)")
    id_field: str | None = F(None, "column holding a stable id (default: id; else a prompt hash)")


@dataclass
class DataCfg:
    train: list[DataSource] = F([], "training / pass-rate pool: a list of sources")
    eval: list[DataSource] = F([], "held-out evaluation sources")


@dataclass
class SamplingCfg:
    temperature: float = F(1.0, "sampling temperature (0 = greedy)", min=0.0)
    top_p: float = F(1.0, "nucleus sampling mass", min=0.0, max=1.0)
    top_k: int = F(0, "keep the k most likely tokens (0 = off)", min=0)
    max_completion_length: int = F(32, "new tokens per completion", min=1)
    batch_size: int = F(256, "sequences per sampler call (prompts x samples)", min=1)
    backend: str = F("hf", "rollout engine (a vLLM engine will plug into rollout.SAMPLERS)",
                     choices=("hf",))


@dataclass
class OptimCfg:
    name: str = F("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = F(1e-3, "peak learning rate", min=0.0)
    weight_decay: float = F(0.0, "decoupled weight decay", min=0.0)
    beta1: float = F(0.9, "Adam beta1 / SGD momentum", min=0.0, max=1.0)
    beta2: float = F(0.99, "Adam beta2", min=0.0, max=1.0)
    warmup_steps: int = F(0, "linear warm-up steps", min=0)
    lr_scheduler_type: str = F("cosine", "schedule after warm-up",
                               choices=("constant", "linear", "cosine"))
    max_grad_norm: float = F(1.0, "gradient-norm clip (0 = off)", min=0.0)


@dataclass
class TrainCfg:
    max_steps: int = F(100, "optimizer steps", min=1)
    per_device_train_batch_size: int = F(32, "sequences per micro-batch per process", min=1)
    gradient_accumulation_steps: int = F(1, "micro-batches per optimizer step", min=1)
    max_length: int = F(128, "truncate prompt+response to this many tokens", min=8)
    logging_steps: int = F(10, "console log every N steps (metrics.jsonl gets every step)", min=1)
    save_steps: int = F(0, "checkpoint every N steps (0 = only at the end)", min=0)
    save_total_limit: int = F(2, "keep the newest N checkpoints (0 = keep all)", min=0)


@dataclass
class RunCfg:
    dir: str = F("runs/default", "run directory (also --run-dir)")
    seed: int = F(0, "global seed: data order, sampling, initialisation", min=0)
    threads: int = F(0, "torch CPU threads (0 = torch's default)", min=0)
    report_to: list[str] = F([], "extra trackers: tensorboard, wandb, trackio")
    progress: bool = F(True, "show progress bars")


@dataclass
class LedgerCfg:
    path: str | None = F(None, "SQLite ledger file (default: <run dir>/ledger.sqlite)")
    model: str | None = F(None, "model tag recorded with each trial (default: model.path)")
    stage: str = F("passrate", "stage tag recorded with each trial")


@dataclass
class PassrateCfg:
    num_generations: int = F(8, "K: rollouts per problem", min=1)


@dataclass
class EvalCfg:
    n: int = F(16, "samples per problem", min=1)
    ks: list[int] = F([], "k values for pass@k (default: 1, 2, 4, ... <= n)")
    temperature: float = F(1.0, "sampling temperature for the n samples", min=0.0)
    top_p: float = F(1.0, "nucleus mass", min=0.0, max=1.0)
    top_k: int = F(0, "top-k (0 = off)", min=0)
    greedy: bool = F(True, "also decode greedily once per problem")
    max_completion_length: int = F(32, "new tokens per completion", min=1)
    batch_size: int = F(256, "sequences per sampler call", min=1)


# ---------------------------------------------------------------------------------------------
# Command roots
# ---------------------------------------------------------------------------------------------
@dataclass
class SFTConfig:
    model: ModelCfg = F(ModelCfg(), "")
    data: DataCfg = F(DataCfg(), "")
    optim: OptimCfg = F(OptimCfg(), "")
    train: TrainCfg = F(TrainCfg(), "")
    run: RunCfg = F(RunCfg(), "")


@dataclass
class PassrateConfig:
    model: ModelCfg = F(ModelCfg(), "")
    data: DataCfg = F(DataCfg(), "")
    sampling: SamplingCfg = F(SamplingCfg(), "")
    passrate: PassrateCfg = F(PassrateCfg(), "")
    ledger: LedgerCfg = F(LedgerCfg(), "")
    run: RunCfg = F(RunCfg(), "")


@dataclass
class EvalConfig:
    model: ModelCfg = F(ModelCfg(), "")
    data: DataCfg = F(DataCfg(), "")
    eval: EvalCfg = F(EvalCfg(), "")
    run: RunCfg = F(RunCfg(), "")


@dataclass
class LedgerConfig:
    ledger: LedgerCfg = F(LedgerCfg(), "")
    bins: int = F(8, "histogram bins over [0, 1]", min=1)
    estimator: str = F("plain", "p-hat estimator", choices=("plain", "beta_mean"))
    run: RunCfg = F(RunCfg(), "")


@dataclass
class DemoConfig:
    teacher_preset: str = F("small", "teacher size preset", choices=("nano", "tiny", "small", "medium"))
    student_preset: str = F("tiny", "student size preset", choices=("nano", "tiny", "small", "medium"))
    teacher_steps: int = F(2000, "teacher SFT steps", min=1)
    student_steps: int = F(1500, "student SFT steps (fewer: a weaker student)", min=1)
    passrate_pool: int = F(240, "training problems whose student pass rates are estimated", min=1)
    data: DataCfg = F(DataCfg(), "")
    optim: OptimCfg = F(OptimCfg(lr=2e-3, warmup_steps=50), "")
    train: TrainCfg = F(TrainCfg(per_device_train_batch_size=64, logging_steps=100,
                                 save_steps=250), "")
    sampling: SamplingCfg = F(SamplingCfg(max_completion_length=24), "")
    passrate: PassrateCfg = F(PassrateCfg(), "")
    eval: EvalCfg = F(EvalCfg(n=16, max_completion_length=24), "")
    run: RunCfg = F(RunCfg(dir="runs/demo"), "")


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
def all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _nearest(key: str, root) -> str:
    match = difflib.get_close_matches(key, all_keys(root), n=1, cutoff=0.5)
    if not match:  # try the last component alone (e.g. 'lr' typed without its section)
        tails = {k.rsplit(".", 1)[-1]: k for k in all_keys(root)}
        hit = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.6)
        match = [tails[hit[0]]] if hit else []
    return f"; did you mean '{match[0]}'?" if match else ""


def _type_name(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _convert(value: Any, t, key: str, meta: dict, root):
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], key, meta, root)
    if dataclasses.is_dataclass(t):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {t.__name__} fields, got {value!r}")
        return _build(t, value, f"{key}.", root)
    if origin is list:
        (item_t,) = typing.get_args(t)
        if not isinstance(value, list):
            if item_t is int and isinstance(value, int) and not isinstance(value, bool):
                value = [value]  # 'difficulty: 3' means [3, 3]-style single values
            else:
                raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item_t, f"{key}[{i}]", meta, root) for i, v in enumerate(value)]
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif t is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif t is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        near = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{key}: {value!r} is not one of {list(meta['choices'])}{hint}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key}: {value!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{key}: {value!r} is above the maximum {meta['max']}")
    return value


def _build(cls, data: dict, prefix: str, root):
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in data.items():
        if k not in names:
            typed = f"{prefix}{k}"
            if isinstance(v, dict) and v:  # a misspelt section: match its first key as a whole
                typed += "." + str(next(iter(v)))
            raise ConfigError(f"unknown config key '{prefix}{k}'{_nearest(typed, root)}")
    kwargs = {}
    for name, f in names.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", f.metadata, root)
    return cls(**kwargs)


def _set_dotted(data: dict, key: str, value, root) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{p}' is not a section{_nearest(key, root)}")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str], root) -> dict:
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value{_nearest(item, root)}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
        _set_dotted(data, key.strip(), value, root)
    return data


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(root, path: str | Path | None = None, overrides: list[str] = (), run_dir=None):
    """Build and validate a ``root`` config from a YAML file, overrides and --run-dir."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = _merge(data, parse_overrides(list(overrides), root))
    if run_dir is not None:
        data = _merge(data, {"run": {"dir": str(run_dir)}})
    cfg = _build(root, data, "", root)
    check(cfg)
    return cfg


def check(cfg) -> None:
    """Cross-field rules that a single field's range cannot express."""
    for section in ("data",):
        data = getattr(cfg, section, None)
        for split in ("train", "eval") if data else ():
            for i, src in enumerate(getattr(data, split)):
                key = f"data.{split}[{i}]"
                if len(src.difficulty) not in (1, 2) or min(src.difficulty) < 0:
                    raise ConfigError(f"{key}.difficulty: expected [lo, hi] or one int >= 0")
                if len(src.difficulty) == 2 and src.difficulty[0] > src.difficulty[1]:
                    raise ConfigError(f"{key}.difficulty: lo {src.difficulty[0]} > hi {src.difficulty[1]}")
    model = getattr(cfg, "model", None)
    if model is not None and model.path is None and model.preset is None:
        raise ConfigError("model.path: set a model directory (or model.preset for a tiny model)")
    ev = getattr(cfg, "eval", None)
    if isinstance(ev, EvalCfg) and any(k < 1 or k > ev.n for k in ev.ks):
        raise ConfigError(f"eval.ks: every k must lie in [1, eval.n={ev.n}], got {ev.ks}")
    for tracker in getattr(getattr(cfg, "run", None), "report_to", []):
        if tracker not in ("tensorboard", "wandb", "trackio"):
            raise ConfigError(f"run.report_to: unknown tracker {tracker!r}; "
                              "choose tensorboard, wandb or trackio")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    from .runlog import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(root) -> str:
    """Every option of a command: key, type, default, help (for ``--help``)."""
    lines = []
    default = root()
    shown_source = []

    def walk(cls, obj, prefix):
        h = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = h[f.name]
            val = getattr(obj, f.name)
            if dataclasses.is_dataclass(t):
                walk(t, val, f"{prefix}{f.name}.")
                continue
            if typing.get_origin(t) is list and typing.get_args(t)[0] is DataSource:
                lines.append(f"  {prefix + f.name:<36} {f.metadata['help']}"
                             + (" (source fields as above)" if shown_source else ", each with:"))
                if not shown_source:
                    for sf in dataclasses.fields(DataSource):
                        lines.append(f"      - {sf.name:<30} {sf.metadata['help']}"
                                     f" [default {getattr(DataSource(), sf.name)!r}]")
                    shown_source.append(True)
                continue
            extra = f" {{{', '.join(map(str, f.metadata['choices']))}}}" if f.metadata.get("choices") else ""
            lines.append(f"  {prefix + f.name:<36} {f.metadata.get('help', '')}{extra} [default {val!r}]")

    walk(root, default, "")
    return "\n".join(lines)
