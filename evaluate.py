"""``python evaluate.py --config C --weights W [--set key=value ...]``: the same as
``kmr evaluate`` (see ``keras_maskrcnn/cli/evaluate.py``), kept for a checkout."""
import sys

from keras_maskrcnn.cli.evaluate import (category_ids_of, load_model, main,  # noqa: F401
                                         parse_args, val_split_paths)
from keras_maskrcnn.cli.dispatch import run

if __name__ == "__main__":
    sys.exit(run("evaluate", sys.argv[1:], prog="evaluate.py"))
