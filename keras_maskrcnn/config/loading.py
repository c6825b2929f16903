"""Config loading: the strict YAML reader, ``base:`` inheritance, ``--set`` overrides, unknown-key
suggestions, and writing a config back out.

Not a paper section: the machinery around ``schema.py``. ``load_config(path, overrides)`` reads a
file that may name ``base: other.yaml`` (one level of inheritance, deep-merged: mappings merge,
lists and scalars replace), applies ``a.b=value`` overrides (values parsed as YAML), then builds
and validates the ``Config``. Any problem raises ``ConfigError`` naming the file (or override)
and the dotted key, before any work starts.

Conventions pinned here:
- YAML is ``safe_load`` plus: "1e-5" is a float (YAML 1.1 wants "1.0e-5"), duplicate keys are
  errors, aliases (``*name``, ``<<: *name``) are refused (a 1 KB file of nested aliases would
  expand to gigabytes, a self-referencing one never ends), and so is nesting deeper than
  ``MAX_DEPTH`` levels. ``base:`` paths are relative to the YAML file; one that is not there
  names a packaged config (``base: maskrcnn_r50_fpn_coco``).
- Origins: each dotted key remembers the file or override that wrote it; an error is reported
  against the longest recorded prefix of its key.
- An unknown key suggests the closest key of its section, else the same name elsewhere.
- ``config_to_dict`` / ``save_config`` write every field (tuples as lists); loading inverts them.
- Command lines take overrides as ``--set a=1 b=2`` (detectron2's habit), ``--set a=1 --set
  b=2`` or both, applied left to right (``add_override_argument``).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from .fields import ConfigError, brief, field_types, is_section
from .packaged import resolve_config
from .schema import Config


# ----------------------------------------------------------------------------- YAML loading
#: Deepest nesting of lists and mappings a config may have (the schema needs 4).
MAX_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    """safe_load plus: "1e-5" is a float (YAML 1.1 wants "1.0e-5"), duplicate keys are errors,
    no aliases, at most ``MAX_DEPTH`` levels."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML aliases are not supported (*{event.anchor[:40]} on line "
                              f"{event.start_mark.line + 1}): write the value out")
        if self._depth >= MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels (line "
                              f"{self.peek_event().start_mark.line + 1})")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {brief(key)} (line "
                                  f"{key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _parse_yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(e.reason, source=source) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {str(e)[:500]}", source=source) from None
    except (ValueError, RecursionError) as e:  # e.g. an int of more than 4300 digits
        raise ConfigError(f"invalid YAML: {str(e).splitlines()[0][:200]}", source=source) from None


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", source=path) from None
    data = _parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}",
                          source=path)
    return data


def _deep_merge(base: Mapping, update: Mapping) -> Dict[str, Any]:
    """Mappings merge recursively; anything else in ``update`` replaces the base value."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _deep_merge(merged[key], value)
        merged[key] = value
    return merged


def _record_origins(data: Mapping, source: str, origins: Dict[str, str], prefix: str = ""):
    """origins[dotted key] = where its value was written, for error messages."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        origins[dotted] = source
        if isinstance(value, Mapping):
            _record_origins(value, source, origins, dotted + ".")


def _source_of(key: Optional[str], origins: Mapping[str, str], default: str) -> str:
    parts = re.sub(r"\[\d+\]", "", key or "").split(".")
    for n in range(len(parts), 0, -1):  # longest recorded prefix of the key
        if ".".join(parts[:n]) in origins:
            return origins[".".join(parts[:n])]
    return default


def _all_keys(cls=None, prefix: str = ""):
    """Every valid dotted key of the schema (sections and leaves)."""
    for f in dataclasses.fields(cls or Config):
        yield prefix + f.name
        tp = field_types(cls or Config)[f.name]
        if is_section(tp):
            yield from _all_keys(tp, prefix + f.name + ".")


def _unknown_key(key: str, name: str, valid: Iterable[str]) -> ConfigError:
    """ConfigError for an unknown key, suggesting the closest valid key (difflib)."""
    valid = list(valid)
    section = key[: len(key) - len(name)]
    close = [section + m for m in difflib.get_close_matches(name, valid, n=1, cutoff=0.6)]
    if not close:  # right name in the wrong section, or a typo in the full path
        names = {k: k.rsplit(".", 1)[-1] for k in _all_keys()}
        near = difflib.get_close_matches(name, set(names.values()), n=1, cutoff=0.8)
        close = [k for k, n in names.items() if n in near]
    hint = " or ".join(repr(k) for k in close[:3])
    hint = f" (did you mean {hint}?)" if close else f" (valid keys: {', '.join(valid)})"
    return ConfigError(f"unknown key{hint}", key)


def _from_mapping(cls, data, prefix: str = ""):
    """Builds section ``cls`` from a mapping; ConfigError keys are full dotted paths."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {type(data).__name__} {brief(data)}",
                          prefix[:-1] or None)
    hints = field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in hints:
            raise _unknown_key(f"{prefix}{name}", str(name), hints)
        if is_section(hints[name]):
            value = _from_mapping(hints[name], value, f"{prefix}{name}.")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(e.reason, prefix + (e.key or "")) from None


def _set_override(data: Dict[str, Any], item: str, origins: Dict[str, str], source: str):
    """Applies one ``a.b.c=value`` override to the raw dict (after checking the key)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {brief(item)} is not of the form section.key=value",
                          source=source)
    where = f"{source} (override {brief(item)})"
    cls, node, parts = Config, data, key.split(".")
    for i, part in enumerate(parts):
        if cls is None:
            raise ConfigError(f"{'.'.join(parts[:i])!r} is a value, not a section", key, where)
        hints = field_types(cls)
        if part not in hints:
            err = _unknown_key(".".join(parts[: i + 1]), part, hints)
            raise ConfigError(err.reason, err.key, where) from None
        cls = hints[part] if is_section(hints[part]) else None
        if i < len(parts) - 1:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
    value = _parse_yaml(text, where)
    if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), Mapping):
        value = _deep_merge(node[parts[-1]], value)
    node[parts[-1]] = value
    for i in range(1, len(parts)):  # sections the file did not mention come from the override
        origins.setdefault(".".join(parts[:i]), where)
    origins[key] = where
    if isinstance(value, Mapping):
        _record_origins(value, where, origins, key + ".")


def _build(data: Mapping, origins: Mapping[str, str], source: str) -> Config:
    try:
        return _from_mapping(Config, data)
    except ConfigError as e:
        raise ConfigError(e.reason, e.key, _source_of(e.key, origins, source)) from None


def load_config(path: str, overrides: Optional[Iterable[str]] = None) -> Config:
    """Loads and validates a YAML config.

    Args:
      path: YAML file, or the name of a packaged config (``"shapes"``,
        ``"detectron2/mask_rcnn_R_50_FPN_3x"``; a path that exists wins). A top-level
        ``base: other.yaml`` (relative to this file, else a packaged config's name) is deep-merged
        under it; the base may not have a ``base`` itself (one level of inheritance).
      overrides: strings ``"dotted.key=value"``, value parsed as YAML (``"a.b=[1, 2]"``),
        applied in order after the merge.
    Returns:
      A frozen ``Config``.
    Raises:
      ConfigError: unknown key (with the closest valid key), wrong type or bad value; the message
        names the file (or override) and the dotted key.
    """
    path = resolve_config(path)
    data, origins = _read_yaml(path), {}
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"expected a file path, got {brief(base)}", "base", path)
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.exists(base_path):  # a packaged config's name ("maskrcnn_r50_fpn_coco")
            try:
                base_path = resolve_config(base)
            except ConfigError as e:
                raise ConfigError(f"{base_path}: {e.reason}", "base", path) from None
        base_data = _read_yaml(base_path)
        if "base" in base_data:
            raise ConfigError(f"{base!r} is itself based on {base_data['base']!r}: only one "
                              "level of inheritance is allowed", "base", base_path)
        _record_origins(base_data, base_path, origins)
        _record_origins(data, path, origins)  # the file's own keys win over the base's
        data = _deep_merge(base_data, data)
    for item in overrides or ():
        _set_override(data, item, origins, path)
    return _build(data, origins, path)


def add_override_argument(parser, example="train.batch_size=4"):
    """Adds ``--set KEY=VALUE [KEY=VALUE ...]`` to an argparse parser, repeatable.

    ``args.set`` is then the flat list of overrides in command-line order, for
    ``load_config(path, overrides=args.set)``: ``--set a=1 b=2 --set c=3`` gives
    ``["a=1", "b=2", "c=3"]``.
    """
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help=f"override config values, e.g. --set {example} "
                             "(several after one --set, or --set repeated)")


def config_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Builds and validates a Config from a nested dict (missing keys take their defaults).
    ``source`` names the origin in error messages."""
    return _build(d, {}, source)


def apply_overrides(cfg: Config, overrides: Iterable[str], source: str = "<config>") -> Config:
    """Returns ``cfg`` with ``"dotted.key=value"`` overrides applied (same rules as load)."""
    data, origins = config_to_dict(cfg), {}
    for item in overrides:
        _set_override(data, item, origins, source)
    return _build(data, origins, source)


def config_to_dict(cfg) -> Dict[str, Any]:
    """Nested plain dict of a config (tuples become lists); ``config_from_dict`` inverts it."""
    if is_section(type(cfg)):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [config_to_dict(v) for v in cfg]
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block-style mappings; lists of scalars on one line (``sizes: [32.0, 64.0]``)."""

    def represent_list(self, data):
        flow = not any(isinstance(v, (list, dict)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def config_to_yaml(cfg: Config) -> str:
    """Every field (defaults included) as YAML text, as ``save_config`` writes it."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, width=100)


def save_config(cfg: Config, path: str) -> None:
    """Writes every field (defaults included) as YAML; ``load_config(path) == cfg``."""
    text = config_to_yaml(cfg)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
