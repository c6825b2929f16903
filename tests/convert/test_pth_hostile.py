"""The crafted-checkpoint tests of tests/reliability/test_pth_files.py, run with the converter
tests too (one source: imported, not copied)."""
from reliability.test_pth_files import *  # noqa: F401,F403
