"""``python -m keras_maskrcnn SUBCOMMAND ...``: the same program as the ``kmr`` console script."""
import sys

from keras_maskrcnn.cli.dispatch import main

if __name__ == "__main__":
    sys.exit(main())
