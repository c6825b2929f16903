"""Shared test set-up.

torch/torchvision are the reference oracle (the ``test`` extra installs them). They are imported
before TensorFlow: importing torchvision after TensorFlow and Keras segfaults on this platform.
Tests that need them use the ``torch``/``torchvision`` fixtures, which skip with a visible reason
when they are absent.

Layout: tests/ mirrors the package (tests/ops, tests/layers, tests/models, tests/losses,
tests/accel, tests/config, tests/convert, tests/data; tests/integration for end-to-end runs:
train.py and evaluate.py subprocesses, distribute, export, whole-model parity). Code shared
between folders lives in tests/support (``import support``: this file's folder, tests/, is on
sys.path): ``support.models`` (tiny_config, synthetic_batch), ``support.layers`` (the layer
harness), ``support.rpn`` (torchvision's RPN set-up), ``support.accel``, ``support.data``.
Test file basenames are unique across folders (no ``__init__.py``: pytest's default import mode).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

try:  # must come before tensorflow, see the module docstring
    import torch as _torch
    import torchvision as _torchvision

    _torch.set_num_threads(2)
    _TORCH_ERROR = None
except Exception as e:  # pragma: no cover - depends on the environment
    _torch = _torchvision = None
    _TORCH_ERROR = repr(e)

import numpy as np
import pytest
import tensorflow as tf  # noqa: E402  (after torch on purpose)


@pytest.fixture
def torch():
    if _torch is None:
        pytest.skip(f"torch not installed (pip install -e '.[test]'): {_TORCH_ERROR}")
    return _torch


@pytest.fixture
def torchvision():
    if _torchvision is None:
        pytest.skip(f"torchvision not installed (pip install -e '.[test]'): {_TORCH_ERROR}")
    return _torchvision


@pytest.fixture
def rng():
    return np.random.default_rng(0)
