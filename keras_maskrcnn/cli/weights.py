"""Which weights a command loads when ``--weights`` is left out.

Not a paper section. A run directory (``train.output_dir``) and a ``kmr convert`` output both
hold ``config.yaml`` next to ``model.weights.h5``, so ``--config DIR/config.yaml`` alone names
the model: the weights are taken from the config file's directory. A packaged config (a name)
has none there, so the command still needs ``--weights``. Import-light: no TensorFlow.
"""
import os

from keras_maskrcnn.config import resolve_config

WEIGHTS_FILE = "model.weights.h5"


def weights_beside(config):
    """``model.weights.h5`` in the directory of config ``config`` (a path or a packaged name)
    when that file exists, else None."""
    path = os.path.join(os.path.dirname(resolve_config(config)), WEIGHTS_FILE)
    return path if os.path.isfile(path) else None


def resolve_weights(config, weights=None):
    """``weights`` when given (FileNotFoundError naming it if missing), else
    ``weights_beside(config)``; FileNotFoundError saying what to pass when there is none."""
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--weights {weights}: no such file")
        return weights
    beside = weights_beside(config)
    if beside is None:
        raise FileNotFoundError(
            f"--weights not given and there is no {WEIGHTS_FILE} next to the config "
            f"{resolve_config(config)} (a run directory or a `kmr convert` output holds both)")
    return beside
