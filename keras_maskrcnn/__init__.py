"""keras-maskrcnn: Mask R-CNN, Keypoint R-CNN and YOLACT for TensorFlow 2 / Keras 3.

Distribution name ``keras3-maskrcnn`` (the unrelated ``keras-maskrcnn`` on the package index is
another project with the same import name: not to be installed beside it); command line
``kmr`` / ``python -m keras_maskrcnn`` (``keras_maskrcnn.cli``).

Public API: ``build_model(config)``, ``MaskRCNN``, ``YOLACT``, ``load_config``, and the submodules
``ops`` (tensor functions), ``layers``, ``preprocessing``, ``convert``
(``convert.torchvision_models.from_torchvision``).

``import keras_maskrcnn`` imports nothing: ``train.py`` validates the config and sets
TensorFlow's environment (oneDNN, the lean allocator, which must act on a process that has
allocated little) before TensorFlow loads, so these names are imported on first use.
``keras_maskrcnn.MaskRCNN`` / ``YOLACT`` also import the builders, which ``from_config``
needs: ``from keras_maskrcnn import MaskRCNN`` (or ``YOLACT``) is enough to load a ``.keras``
file in a fresh process.
"""
__version__ = "0.2.0"


def build_model(config, category_ids=None, build=True):
    """The config's ``MaskRCNN`` or ``YOLACT`` (``model.architecture``) for a Config, a config
    dict or a YAML path (see ``builders.build_model``); when ``build``, with the weights the
    config names loaded (``model.backbone.weights``, ``model.weights``: see
    ``convert.weights.load_initial_weights``; another class count keeps the class layers
    fresh)."""
    from keras_maskrcnn import config as config_lib
    from keras_maskrcnn.builders import build_model as _build  # TensorFlow: on first use
    from keras_maskrcnn.convert.weights import load_initial_weights

    if isinstance(config, str):
        config = config_lib.load_config(config)
    elif isinstance(config, dict):
        config = config_lib.config_from_dict(config)
    model = _build(config, category_ids=category_ids, build=build)
    if build:
        load_initial_weights(model, config.model)
    return model


def load_config(path, overrides=None):
    """Strict YAML config loading from a path or a packaged config's name (``"shapes"``; see
    ``keras_maskrcnn.config.load_config``)."""
    from keras_maskrcnn.config import load_config as _load  # yaml: on first use
    return _load(path, overrides=overrides)


def __getattr__(name):
    if name == "MaskRCNN":
        from keras_maskrcnn import builders  # noqa: F401  registers MaskRCNN.from_config's builder
        from keras_maskrcnn.models.mask_rcnn import MaskRCNN
        return MaskRCNN
    if name == "YOLACT":
        from keras_maskrcnn import builders  # noqa: F401  registers YOLACT.from_config's builder
        from keras_maskrcnn.models.yolact import YOLACT
        return YOLACT
    raise AttributeError(f"module 'keras_maskrcnn' has no attribute {name!r}")
