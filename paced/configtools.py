"""The machinery behind paced's typed configs: dataclass fields with help and ranges, YAML +
``key=value`` overrides, validation that names the key, and ``--help`` text.

``paced.config`` declares the sections and the command roots with ``option``; nothing here knows them.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    pass


# YAML is loaded within a budget: a config is a few hundred values, never deeply nested.
MAX_DEPTH = 64          # nested collections
MAX_NODES = 100_000     # values after alias expansion (a "billion laughs" expands to 10^9)
MAX_TEXT = 4 * 2 ** 20  # characters of one config file or override


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with a nesting limit (its composer recurses once per level)."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size_ok(obj) -> None:
    """Walk ``obj`` as later code will (a shared alias counted every time it is reached)."""
    seen, stack = 0, [obj]
    while stack:
        x = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(f"more than {MAX_NODES:,} values once YAML aliases are expanded")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def safe_yaml(text: str):
    """``yaml.safe_load`` within the budget above; every failure a ``ConfigError`` (no position:
    the caller names the file or override)."""
    if len(text) > MAX_TEXT:
        raise ConfigError(f"{len(text):,} characters, more than the {MAX_TEXT:,} a config may hold")
    try:
        data = yaml.load(text, Loader=_BoundedLoader)   # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError("invalid YAML: " + " ".join(str(e).split())) from None
    except RecursionError:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:             # e.g. an integer beyond Python's 4,300-digit limit
        raise ConfigError(" ".join(str(e).split())) from None
    _expanded_size_ok(data)
    return data


def option(default, help: str, *, min=None, max=None, choices=None):
    """A config field: default, help text and optional range/choices checked at load."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(x):
    import copy
    return copy.deepcopy(x)


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


def check_choice(key: str, value, choices) -> None:
    """ConfigError naming ``key`` (and the nearest choice) unless ``value`` is one of ``choices``."""
    if value not in choices:
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{hint}")


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
        try:
            value = float(value)
        except OverflowError:   # an integer past the largest float (~1.8e308)
            raise ConfigError(f"{key}: an integer near 10^{int(value.bit_length() * 0.30103)} is too "
                              f"large for a number") from None
    elif t is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    if meta.get("choices"):
        check_choice(key, value, meta["choices"])
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
            value = data[name]
            if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and \
                    f.default_factory is not dataclasses.MISSING:
                # a section given in part keeps the root's own defaults for the rest (e.g.
                # DistillConfig's run.dir 'runs/distill'), not the section class's
                value = _merge(dataclasses.asdict(f.default_factory()), value)
            kwargs[name] = _convert(value, hints[name], f"{prefix}{name}", f.metadata, root)
    return cls(**kwargs)


def _set_dotted(data: dict, key: str, value, root) -> None:
    if "[" in key:
        head = key.split("[", 1)[0]
        raise ConfigError(f"override {key}: an item of a list cannot be set alone; give the whole list, "
                          f"e.g. '{head}=[{{source: add, n: 64}}]'")
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{p}' is not a section{_nearest(key, root)}")
    node[parts[-1]] = value


def _field_type(root, key: str):
    """The annotated type of the dotted ``key`` (``data.eval[0].prompt_template``), or None."""
    t = root
    for part in key.split("."):
        name, _, index = part.partition("[")
        if not dataclasses.is_dataclass(t):
            return None
        t = typing.get_type_hints(t).get(name)
        if t is None:
            return None
        if index and typing.get_origin(t) is list:
            (t,) = typing.get_args(t)
    return t


def _is_text_field(t) -> bool:
    """``str`` or ``str | None``: a value the command line gives as text, verbatim."""
    if typing.get_origin(t) in (Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args == [str]
    return t is str


def parse_overrides(overrides: list[str], root) -> dict:
    """``key=value`` strings -> a nested dict. Values are YAML, except for a text option
    (``str``), which takes the text verbatim unless it is quoted YAML: ``model.system_prompt=You
    are: helpful`` and ``prompt_template={prompt} {instruction}`` need no quoting; ``null`` and
    an empty value still mean None for an optional one."""
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value{_nearest(item, root)}")
        key, raw = item.split("=", 1)
        t = _field_type(root, key.strip())
        if t is not None and _is_text_field(t) and raw not in ("", "null", "~") and raw[:1] not in "'\"":
            _set_dotted(data, key.strip(), raw, root)
            continue
        try:
            value = safe_yaml(raw) if raw != "" else None
        except ConfigError as e:
            shown = raw if len(raw) <= 80 else raw[:77] + "..."
            hint = (" (quote a value holding {, [, : or # for YAML, e.g. "
                    "'data.train=[{source: add}]' or key='\"{prompt} {instruction}\"')")
            raise ConfigError(f"override {key}: cannot parse value {shown!r}: {e}{hint}") from None
        _set_dotted(data, key.strip(), value, root)
    return data


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_raw(root, path: str | Path | None = None, overrides: list[str] = (), run_dir=None):
    """Build and validate a ``root`` config from a YAML file, overrides and --run-dir."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist"
                              + (" (it is a directory)" if path.is_dir() else ""))
        try:
            with open(path, "rb") as f:     # never more than a config may hold (a 10 GB file)
                raw = f.read(4 * MAX_TEXT + 1)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
        if len(raw) > 4 * MAX_TEXT:
            raise ConfigError(f"{path}: more than {4 * MAX_TEXT:,} bytes, more than a config may hold")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            what = "UTF-16 text" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8 text"
            raise ConfigError(f"{path}: {what} (byte {raw[e.start]:#04x} at offset {e.start}); "
                              f"save it as UTF-8") from None
        try:
            data = safe_yaml(text.removeprefix("\ufeff")) or {}
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = _merge(data, parse_overrides(list(overrides), root))
    if run_dir is not None:
        data = _merge(data, {"run": {"dir": str(run_dir)}})
    return _build(root, data, "", root)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    from .runlog import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(root) -> str:
    """Every option of a command: key, type, default, help (for ``--help``)."""
    lines = []
    default = root()
    shown = set()

    def walk(cls, obj, prefix):
        h = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = h[f.name]
            val = getattr(obj, f.name)
            if dataclasses.is_dataclass(t):
                walk(t, val, f"{prefix}{f.name}.")
                continue
            item = typing.get_args(t)[0] if typing.get_origin(t) is list else None
            if item is not None and dataclasses.is_dataclass(item):  # a list of sub-sections
                first = item not in shown
                lines.append(f"  {prefix + f.name:<36} {f.metadata['help']}"
                             + (", each with:" if first else f" ({item.__name__} fields as above)"))
                if first:
                    shown.add(item)
                    for sf in dataclasses.fields(item):
                        extra = (f" {{{', '.join(map(str, sf.metadata['choices']))}}}"
                                 if sf.metadata.get("choices") else "")
                        lines.append(f"      - {sf.name:<30} {sf.metadata['help']}{extra}"
                                     f" [default {getattr(item(), sf.name)!r}]")
                continue
            extra = f" {{{', '.join(map(str, f.metadata['choices']))}}}" if f.metadata.get("choices") else ""
            lines.append(f"  {prefix + f.name:<36} {f.metadata.get('help', '')}{extra} [default {val!r}]")

    walk(root, default, "")
    return "\n".join(lines)
