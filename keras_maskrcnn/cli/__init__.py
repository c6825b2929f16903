"""The command line: ``kmr`` (console script) and ``python -m keras_maskrcnn``.

Not a paper section. ``main`` dispatches a subcommand to its module's ``main(argv)``;
``train`` and ``evaluate`` live here (the checkout's ``train.py`` / ``evaluate.py`` are thin
wrappers over them), the others where their code is (``keras_maskrcnn.predict``, ``export``,
``convert``, ``data.tfrecord``, ``data.synthetic``, ``demo``). Import-light: no TensorFlow.
"""
from .dispatch import COMMANDS, main, run

__all__ = ["COMMANDS", "main", "run"]
