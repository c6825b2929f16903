"""The reference suite: our converter CLI and ``detect`` side by side with the REAL detectron2
and YOLACT (not models of them), prepared by tests/reference/setup.sh outside this repository.

Marker ``reference``; not in the default run (setup.cfg: ``-m "not slow and not reference"``);
run it with ``KMR_REFERENCE_DIR=DIR python -m pytest -m reference tests/reference -s``. Every
test skips with the reason when ``KMR_REFERENCE_DIR`` is unset or what setup.sh prepares there
is missing.
"""
import importlib
import os
import sys

import pytest

REFERENCE_DIR = os.environ.get("KMR_REFERENCE_DIR")


def require_reference(*parts):
    """The path ``KMR_REFERENCE_DIR/parts`` or a skip naming what is missing."""
    if not REFERENCE_DIR:
        pytest.skip("KMR_REFERENCE_DIR is not set: prepare the real detectron2 / YOLACT with "
                    "tests/reference/setup.sh SOURCE_DIR, then export KMR_REFERENCE_DIR=SOURCE_DIR")
    path = os.path.join(REFERENCE_DIR, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing: run tests/reference/setup.sh {REFERENCE_DIR}")
    return path


@pytest.fixture(scope="session")
def detectron2_root():
    """The detectron2 source tree whose CPU extension setup.sh built into this Python."""
    root = require_reference("detectron2")
    try:
        module = importlib.import_module("detectron2._C")
    except ImportError as e:
        pytest.skip(f"detectron2 with its C extension is not importable ({e}): run "
                    f"tests/reference/setup.sh {REFERENCE_DIR}")
    del module
    return root


@pytest.fixture(scope="session")
def yolact_root():
    """setup.sh's shimmed copy of dbolya/yolact (CPU, today's torch), put on sys.path."""
    root = require_reference("yolact_cpu")
    pytest.importorskip("cv2", reason="YOLACT's sources import cv2 (opencv-python-headless)")
    if root not in sys.path:
        sys.path.insert(0, root)
    return root
