"""YAML for configs: loaded within a budget, files (with ``include:``) read within a bound,
renamed keys moved with a warning, configs saved atomically."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

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


def merge_dicts(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------------
# Renamed keys: an old key keeps working for one release, with a warning naming the new one
# ---------------------------------------------------------------------------------------------
def _warn(text: str) -> None:
    print(f"paced: {text}", file=sys.stderr)


def rename_keys(data: dict, renamed: dict, where: str, warn=_warn) -> dict:
    """Move each old dotted key of ``renamed`` found in ``data`` (with a value that is not a
    mapping: the old keys were all single values) to its new key, telling ``warn`` so; a new key
    given as (key, {old value: new value}) also renames those values. An old and a new key both
    set to different values is a ConfigError naming both."""
    for old, new in renamed.items():
        new, values = new if isinstance(new, tuple) else (new, {})
        *path, leaf = old.split(".")
        node = data
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
            continue
        value = was = node.pop(leaf)
        value = values.get(value, value) if isinstance(value, str) else value
        if not node and path:               # an old section left empty
            _pop_empty(data, path)
        *npath, nleaf = new.split(".")
        target = data
        for p in npath:
            nxt = target.setdefault(p, {})
            if not isinstance(nxt, dict):     # 'rl.guide: true' next to a new rl.guide section
                raise ConfigError(f"{where}: '{'.'.join(npath)}' is a section now; set {new} instead of {old}")
            target = nxt
        if nleaf in target and target[nleaf] != value:
            raise ConfigError(f"{where}: {old} (renamed {new}) and {new} are both set, to {value!r} and "
                              f"{target[nleaf]!r}; keep only {new}")
        target[nleaf] = value
        if warn:
            warn(f"{where}: '{old}' is now '{new}'" + (f", its value {was!r} now {value!r}" if was != value else "")
                 + " (the old name works until paced 0.3)")
    return data


def _pop_empty(data: dict, path: list[str]) -> None:
    node = data
    for p in path[:-1]:
        node = node[p]
    if node.get(path[-1]) == {}:
        del node[path[-1]]


MAX_INCLUDES = 8   # include: chains deeper than this are a mistake (or a cycle)


def read_yaml_file(path: Path, renamed: dict | None = None, chain: tuple = ()) -> dict:
    """One config file as a dict, its ``include:`` files (one path or a list, relative to this
    file) merged first and this file's keys on top; old keys renamed per file."""
    data = _read_one(path)
    includes = data.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include: expected a file name or a list of them, got {includes!r}")
    base: dict = {}
    for inc in includes:
        target = (path.parent / inc).resolve()
        if target in chain or len(chain) >= MAX_INCLUDES:
            raise ConfigError(f"{path}: include: {inc!r} includes itself (or the chain is deeper than "
                              f"{MAX_INCLUDES})")
        base = merge_dicts(base, read_yaml_file(path.parent / inc, renamed, (*chain, path.resolve())))
    return merge_dicts(base, rename_keys(data, renamed or {}, str(path)))


def _read_one(path: Path) -> dict:
    """A YAML file's top-level mapping: read within a bound, UTF-8, within the YAML budget."""
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
    return data


def save_config(cfg, path: str | Path) -> None:
    from ..runlog import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


