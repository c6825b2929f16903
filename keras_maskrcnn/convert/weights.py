"""Initial-weight loading, and fine-tuning to another class count (Mask R-CNN paper section 4:
models fine-tuned from ImageNet, detectors from COCO; detectron2 / torchvision's practice of
replacing only the class-dependent predictors).

Called by the jobs (``run.py``, predict, evaluate, export), never by the builders: the builders
make models, this module fills them.

Conventions pinned here (tests/convert/test_weights.py):
- ``model.backbone.weights``: a torchvision ImageNet ResNet / ResNeXt ``.pth`` (its ``fc.`` keys
  ignored; read without torch). ``model.weights`` / ``--weights``: a whole model's
  ``.weights.h5`` or ``.keras`` (ours: a run's ``model.weights.h5``, a checkpoint, or a converted
  torchvision / detectron2 / YOLACT model).
- Class-specific layers (``class_specific_layers``: ``cls_score``, ``bbox_pred``,
  ``mask_fcn_logits``, ``kps_score_lowres``; YOLACT's ``class_logits`` and ``semantic_seg``)
  whose file shapes differ from the model's in the output-channel axis only (the class or
  keypoint count) keep their fresh initialisation;
  everything else loads, and ONE warning line (logger ``keras_maskrcnn``) names the skipped
  layers with both shapes. Any other shape mismatch, and a layer the file lacks, is a
  ``ValueError`` naming the file, the layer and both shapes.
- All or nothing: every layer is checked against the file before any weight is assigned.
- Load into a model that is built but not compiled (the optimizer state a checkpoint holds is
  then ignored, so fine-tuning starts at step 0 with a fresh optimizer).
"""
import contextlib
import logging
import os

import keras

from keras_maskrcnn.convert import state_dict as sd, torchvision as tv

log = logging.getLogger("keras_maskrcnn")

WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


def class_specific_layers(model):
    """{id(layer): layer} of the layers whose shapes depend on the class (or keypoint) count:
    Mask R-CNN's predictors' last layers, YOLACT's class confidences and semantic head."""
    found = []
    for owner, names in (("box_predictor", ("cls_score", "bbox_pred")),
                         ("mask_predictor", ("mask_fcn_logits",)),
                         ("keypoint_predictor", ("kps_score_lowres",))):
        part = getattr(model, owner, None)
        found += [getattr(part, n) for n in names if part is not None]
    head = getattr(model, "prediction_head", None)
    if head is not None:  # YOLACT: K class confidences per anchor; K - 1 semantic channels
        found += [head.predictors["class_logits"], model.semantic_head]
    return {id(layer): layer for layer in found}


def load_initial_weights(model, model_cfg):
    """``model.backbone.weights`` then ``model.weights`` into a built ``model``, when the config
    names them (``model_cfg``: the ``model`` section). Returns the names of the layers left at
    their fresh initialisation (another class count), else ()."""
    for key, path in (("model.backbone.weights", model_cfg.backbone.weights),
                      ("model.weights", model_cfg.weights)):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{key}: no such file: {path}")
    path = model_cfg.backbone.weights
    if path:
        if not path.endswith((".pth", ".pt")):
            raise ValueError(f"model.backbone.weights: expected a torchvision ResNet/ResNeXt .pth "
                             f"state_dict, got {path}")
        with sd.naming_file(path):
            tv.load_resnet_weights(model.backbone, sd.load_state_dict(path), prefix="",
                                   ignore_prefixes=("fc.",))
    if model_cfg.weights:
        return load_weights(model, model_cfg.weights, what="model.weights")
    return ()


def load_weights(model, path, what="--weights"):
    """Loads a ``.weights.h5`` / ``.keras`` file into a built ``model`` (module docstring):
    class-specific layers of another class count are skipped and logged, anything else that
    does not fit is an error naming ``what``, the file, the layer and both shapes.

    Returns:
        the names of the skipped layers (empty when the class counts agree).
    """
    path = os.fspath(path)
    if not path.endswith(WEIGHTS_SUFFIXES):
        hint = (" (convert it first: python -m keras_maskrcnn.convert)"
                if path.endswith((".pth", ".pt", ".pkl")) else "")
        raise ValueError(f"{what} {path}: expected a .weights.h5 or .keras file{hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    layers = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
              if _own_variables(layer)]
    specific = class_specific_layers(model)
    checks = _Checks(specific)
    with _guarded(layers, checks.check):  # pass 1: every layer checked, nothing assigned
        _keras_load(model, path, what)
    if checks.errors:
        raise ValueError(f"{what} {path} does not fit the model: " + "; ".join(checks.errors))
    with _guarded(checks.skipped_layers, lambda layer, store: True):  # pass 2: load the rest
        _keras_load(model, path, what)
    names = tuple(n for n, _ in checks.skipped)
    if names:
        log.warning("%s %s: another class (or keypoint) count, so %s keep their fresh "
                    "initialisation (file vs model kernel shapes: %s); every other layer "
                    "loaded", what, path, ", ".join(names),
                    "; ".join(s for _, s in checks.skipped))
    return names


def _own_variables(layer):
    """The variables Keras saves for ``layer`` itself, in its file order."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


class _Checks:
    """Pass 1's findings: class-specific layers to skip, and errors (one per layer)."""

    def __init__(self, specific):
        self.specific, self.skipped, self.skipped_layers, self.errors = specific, [], [], []

    def check(self, layer, store):
        variables = _own_variables(layer)
        keys = sorted(store.keys(), key=int) if store is not None else []
        if len(keys) != len(variables):
            self.errors.append(f"layer {layer.name!r} has {len(variables)} weights, the file "
                               f"{len(keys)}")
            return True
        file_shapes = [tuple(store[k].shape) for k in keys]
        model_shapes = [tuple(v.shape) for v in variables]
        if file_shapes == model_shapes:
            return True
        shapes = ", ".join(f"{f} vs {m}" for f, m in zip(file_shapes, model_shapes))
        if id(layer) in self.specific and all(
                _only_class_axis_differs(layer, f, m) for f, m in zip(file_shapes, model_shapes)):
            self.skipped.append((layer.name, f"{layer.name} {file_shapes[0]} vs "
                                             f"{model_shapes[0]}"))
            self.skipped_layers.append(layer)
        else:
            self.errors.append(f"layer {layer.name!r}: file shapes vs model shapes {shapes}")
        return True


def _only_class_axis_differs(layer, file_shape, model_shape):
    """True when the shapes differ in the output-channel axis only: a kernel's last (Dense
    (I, K), Conv2D (kh, kw, C, K)) or second to last (Conv2DTranspose (kh, kw, K, C)), a
    bias's only axis."""
    if len(file_shape) != len(model_shape):
        return False
    axis = 0 if len(model_shape) == 1 else len(model_shape) - (
        2 if isinstance(layer, keras.layers.Conv2DTranspose) else 1)
    return all(f == m for i, (f, m) in enumerate(zip(file_shape, model_shape)) if i != axis)


@contextlib.contextmanager
def _guarded(layers, check):
    """While active, Keras' ``load_own_variables`` of each layer calls ``check(layer, store)``
    instead of assigning (an instance attribute shadows the method)."""
    for layer in layers:
        object.__setattr__(layer, "load_own_variables",
                           lambda store, layer=layer: check(layer, store))
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "load_own_variables")


def _keras_load(model, path, what):
    try:
        model.load_weights(path)
    except (OSError, KeyError) as e:  # not an HDF5 / .keras file, truncated
        raise ValueError(f"{what} {path}: cannot be read as Keras weights ({e})") from None
