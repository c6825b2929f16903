"""Code shared by the tests of every folder (tests/ is on sys.path: the root conftest.py).

``ROOT`` is the repository root, ``CONFIGS`` its configs/ folder.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")
