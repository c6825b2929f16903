"""Configs by name: the YAML files shipped inside the package (``keras_maskrcnn/configs``).

Not a paper section. ``--config shapes`` (or ``maskrcnn_r50_fpn_coco``,
``detectron2/mask_rcnn_R_50_FPN_3x``) names a packaged file; anything that exists on disk is
read as a path first, so a local file never loses to a packaged name.

Conventions pinned here:
- A name is the file's path under ``keras_maskrcnn/configs`` without ``.yaml``, with ``/``
  between folders on every platform; ``shapes.yaml`` is accepted for ``shapes``.
- The checkout's top-level ``configs/`` is the same folder (``keras_maskrcnn/configs`` is a
  symlink to it in git; a wheel holds real copies), so one file is edited, never two.
- Paths *inside* a config (datasets, ``train.output_dir``) stay relative to the current
  directory; only ``base:`` is relative to the config file (see ``loading.py``).
"""
from __future__ import annotations

import difflib
import os
from typing import List

from .fields import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def list_configs() -> List[str]:
    """Sorted names of the packaged configs (``"shapes"``,
    ``"detectron2/mask_rcnn_R_50_FPN_3x"``, ...)."""
    names = []
    for root, _, files in os.walk(CONFIG_DIR, followlinks=True):
        rel = os.path.relpath(root, CONFIG_DIR)
        for name in files:
            if name.endswith(".yaml"):
                path = name[:-5] if rel == "." else os.path.join(rel, name[:-5])
                names.append(path.replace(os.sep, "/"))
    return sorted(names)


def packaged_config_path(name: str) -> str:
    """The file of packaged config ``name``; ConfigError (with the closest names) if none."""
    key = name[:-5] if name.endswith(".yaml") else name
    names = list_configs()
    if key in names:
        return os.path.join(CONFIG_DIR, *key.split("/")) + ".yaml"
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"cannot read config file: no such file, and no packaged config of that "
                      f"name{hint} (names: `kmr train --list-configs`)", source=name)


def resolve_config(name_or_path) -> str:
    """A path that exists as given, else the packaged config of that name (see module doc)."""
    path = os.fspath(name_or_path)
    if os.path.exists(path):
        return path
    try:
        return packaged_config_path(path)
    except ConfigError:
        # A path-like miss (configs/shapes.yaml from another directory): name the packaged one.
        base = os.path.basename(path)
        stem = base[:-5] if base.endswith(".yaml") else base
        parent = os.path.basename(os.path.dirname(path))
        for candidate in (f"{parent}/{stem}", stem):
            if candidate in list_configs():
                raise ConfigError(f"cannot read config file: no such file (the packaged config "
                                  f"{candidate!r} is loaded by that name: --config {candidate})",
                                  source=path) from None
        raise
