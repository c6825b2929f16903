"""``kmr SUBCOMMAND ...`` (= ``python -m keras_maskrcnn``): one dispatcher over the entry points.

Not a paper section. Each subcommand forwards its arguments unchanged to the ``main(argv)`` of
the module that implements it (``COMMANDS``), so ``kmr export --help`` shows exactly the flags
of ``python -m keras_maskrcnn.export``. The dispatcher adds three things around that call:

- a bad config (``ConfigError``) or a missing input file (``FileNotFoundError``) is one line on
  stderr, ``kmr <command>: error: ...``, and exit status 2, not a traceback
  (``KMR_TRACEBACK=1`` in the environment shows the traceback instead);
- it refuses to start when the unrelated ``keras-maskrcnn`` distribution (fizyr's Keras 2
  package, same import name ``keras_maskrcnn``) is installed: its files and ours would mix;
- it imports nothing heavy itself: TensorFlow loads in the subcommand, after its arguments
  and config have been checked.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Optional, Sequence

# subcommand -> (module with main(argv), one-line help)
COMMANDS = {
    "train": ("keras_maskrcnn.cli.train",
              "train (resuming from the newest checkpoint), then evaluate, export and draw"),
    "evaluate": ("keras_maskrcnn.cli.evaluate",
                 "COCOeval on the config's validation split: tables, results.json, metrics.json"),
    "predict": ("keras_maskrcnn.predict", "run a model on an image and draw its detections"),
    "export": ("keras_maskrcnn.export", "write a SavedModel for TF Serving"),
    "convert": ("keras_maskrcnn.convert.__main__",
                "convert torchvision / detectron2 / YOLACT weights (+ config.yaml)"),
    "tfrecord": ("keras_maskrcnn.data.tfrecord", "write a COCO dataset as TFRecord shards"),
    "synthetic": ("keras_maskrcnn.data.synthetic", "write the synthetic shapes dataset"),
    "demo": ("keras_maskrcnn.demo", "a tiny random model on a bundled photo (seconds)"),
}
OLD_DISTRIBUTION = "keras-maskrcnn"  # fizyr/keras-maskrcnn 0.1-0.2.2 (2018-2019, Keras 2)


def usage() -> str:
    from keras_maskrcnn import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: kmr SUBCOMMAND [ARGS ...]   (keras3-maskrcnn {__version__}; also "
             "python -m keras_maskrcnn)", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "kmr SUBCOMMAND --help shows a subcommand's flags; kmr train --list-configs "
              "lists the packaged configs."]
    return "\n".join(lines)


def unrelated_distribution() -> Optional[str]:
    """A message when the unrelated ``keras-maskrcnn`` distribution is installed, else None.

    Ours is ``keras3-maskrcnn``; this project was itself called ``keras-maskrcnn`` up to
    0.1.0.dev0, so a development version (``.dev`` in it) of that name is not reported.
    """
    from importlib import metadata

    try:
        version = metadata.version(OLD_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    if "dev" in version:
        return None
    return (f"the unrelated distribution '{OLD_DISTRIBUTION}' {version} (a Keras 2 package with "
            "the same import name keras_maskrcnn) is installed in this environment; its files "
            "and keras3-maskrcnn's overwrite each other. Remove both (pip uninstall -y "
            f"{OLD_DISTRIBUTION} keras3-maskrcnn), then install keras3-maskrcnn again")


def run(command: str, argv: Sequence[str], prog: Optional[str] = None) -> int:
    """Runs subcommand ``command`` with ``argv``; returns its exit status (see module doc)."""
    from keras_maskrcnn.config import ConfigError

    prog = prog or f"kmr {command}"
    conflict = unrelated_distribution()
    if conflict:
        print(f"{prog}: error: {conflict}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    if not hasattr(module, "main"):  # a package whose command line is its __main__ module
        module = importlib.import_module(COMMANDS[command][0] + ".__main__")
    saved = sys.argv[0]
    sys.argv[0] = prog  # argparse's default prog (modules that set none)
    try:
        status = module.main(list(argv))
    except (ConfigError, FileNotFoundError) as e:
        if os.environ.get("KMR_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.argv[0] = saved
    return status if isinstance(status, int) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from keras_maskrcnn import __version__
        print(f"keras3-maskrcnn {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"kmr: error: unknown subcommand {command!r}{hint}; one of: "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run(command, argv[1:])
