"""``python train.py --config C [--set key=value ...]``: the same as ``kmr train`` (see
``keras_maskrcnn/cli/train.py``), kept for a checkout without the package installed."""
import sys

from keras_maskrcnn.cli.dispatch import run
from keras_maskrcnn.cli.train import main, parse_args  # noqa: F401  (tests import them from here)

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:], prog="train.py"))
