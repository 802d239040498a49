"""The machinery behind paced's typed configs: dataclass fields with help and ranges, YAML +
``key=value`` overrides, ``include:`` of other YAML files, renamed keys, validation that names
the key, each section's own ``check``, and ``--help`` text.

``paced.config`` declares the sections and the command roots with ``option``; nothing here knows them.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, Union

from .yamlfiles import ConfigError, merge_dicts, read_yaml_file, rename_keys, safe_yaml  # noqa: F401


def option(default, help: str, *, min=None, max=None):
    """A config field: default, help text and an optional range checked at load (choices are
    the field's ``Literal[...]`` type)."""
    meta = {"help": help, "min": min, "max": max}
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


def choices_of(t) -> tuple | None:
    """The values of a ``Literal[...]`` type (inside ``list[...]`` or ``... | None`` too), or None."""
    origin = typing.get_origin(t)
    if origin is Literal:
        return typing.get_args(t)
    if origin in (list, Union, types.UnionType):
        return next((c for a in typing.get_args(t) if (c := choices_of(a))), None)
    return None


def _convert(value: Any, t, key: str, meta: dict, root):
    origin = typing.get_origin(t)
    if origin is Literal:
        check_choice(key, value, typing.get_args(t))
        return value
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
                value = merge_dicts(dataclasses.asdict(f.default_factory()), value)
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


def parse_overrides(overrides: list[str], root, renamed: dict | None = None) -> dict:
    """``key=value`` strings -> a nested dict. Values are YAML, except for a text option
    (``str``), which takes the text verbatim unless it is quoted YAML: ``model.system_prompt=You
    are: helpful`` and ``prompt_template={prompt} {instruction}`` need no quoting; ``null`` and
    an empty value still mean None for an optional one. An old key of ``renamed`` is moved to
    its new one with a warning."""
    data: dict = {}
    renamed = renamed or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value{_nearest(item, root)}")
        key, raw = item.split("=", 1)
        new = renamed.get(key.strip(), key.strip())
        t = _field_type(root, new[0] if isinstance(new, tuple) else new)
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
    return rename_keys(data, renamed, "override")


def load_raw(root, path: str | Path | None = None, overrides: list[str] = (), run_dir=None,
             renamed: dict | None = None):
    """Build a ``root`` config from a YAML file (and its includes), overrides and --run-dir;
    types, ranges and unknown keys checked (the sections' own ``check`` is ``run_checks``)."""
    data = read_yaml_file(Path(path), renamed) if path is not None else {}
    data = merge_dicts(data, parse_overrides(list(overrides), root, renamed))
    if run_dir is not None:
        data = merge_dicts(data, {"run": {"dir": str(run_dir)}})
    return _build(root, data, "", root)


def run_checks(cfg, key: str = "") -> None:
    """Each section's cross-field rules, innermost first: ``section.check(key)`` where a section
    defines one, ``key`` its dotted name ('' for the root, 'data.train[0]' for a source)."""
    for f in dataclasses.fields(cfg):
        value, sub = getattr(cfg, f.name), f"{key}.{f.name}" if key else f.name
        if dataclasses.is_dataclass(value):
            run_checks(value, sub)
        elif isinstance(value, list):
            for i, x in enumerate(value):
                if dataclasses.is_dataclass(x):
                    run_checks(x, f"{sub}[{i}]")
    if hasattr(cfg, "check"):
        cfg.check(key)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


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
                        c = choices_of(typing.get_type_hints(item)[sf.name])
                        extra = f" {{{', '.join(map(str, c))}}}" if c else ""
                        lines.append(f"      - {sf.name:<30} {sf.metadata['help']}{extra}"
                                     f" [default {getattr(item(), sf.name)!r}]")
                continue
            c = choices_of(t)
            extra = f" {{{', '.join(map(str, c))}}}" if c else ""
            lines.append(f"  {prefix + f.name:<36} {f.metadata.get('help', '')}{extra} [default {val!r}]")

    walk(root, default, "")
    return "\n".join(lines)
