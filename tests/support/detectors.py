"""The detector contract harness: the checks every detector (Mask R-CNN, YOLACT) passes, written
once (tests/models/test_detector_contract.py runs each on each architecture).

A ``DetectorCase`` names a tiny config, a training batch whose GT reaches every head and level,
the loss names and the inference outputs. The ``check_*`` functions take a case:

* ``check_build``: every layer built, the class and its mask kind, ``compile`` builds the
  optimizer's slots (the step then creates no variable).
* ``check_training_forward``: finite losses with the case's names; an image without GT gives
  no positive.
* ``check_every_weight_gets_a_gradient``: ``support.models.assert_every_weight_gets_a_gradient``.
* ``check_fit_one_step``: ``fit`` traces its step once, logs finite losses and moves every
  trainable weight.
* ``check_detect``: ``detect`` on images of sizes that need resizing: boxes inside the image,
  boolean image-sized masks, dataset labels.
* ``check_keras_round_trip`` / ``check_weights_round_trip``: ``.keras`` and ``.weights.h5``
  give the same inference outputs, every key (exactly).
* ``check_accel_matches_plain``: ``model.accel`` on and off, same weights, same outputs
  (``support.accel.assert_same_inference_outputs``).
"""
import dataclasses
from typing import Callable, Tuple

import keras
import numpy as np
import tensorflow as tf

from keras_maskrcnn import build_model
from support import models as support_models
from support.accel import assert_same_inference_outputs

CATEGORY_IDS = [11, 22, 33]


@dataclasses.dataclass
class DetectorCase:
    """One detector under the harness.

    Args:
        id: the pytest id.
        config: ``config(**overrides)`` -> a tiny Config (overrides as ``--set`` values).
        batch: ``batch(num_gt)`` -> a training batch (num_gt: GT per image; 0 = none).
        loss_names: the names ``compute_losses`` returns.
        output_keys: the inference outputs.
        mask_type: "box" or "image".
        detect_overrides: config overrides under which random weights give detections.
    """
    id: str
    config: Callable
    batch: Callable
    loss_names: Tuple[str, ...]
    output_keys: Tuple[str, ...]
    mask_type: str
    detect_overrides: dict

    def __repr__(self):
        return self.id

    def build(self, **overrides):
        return build_model(self.config(**overrides))


def inference_inputs(batch):
    return {"images": batch["images"], "image_sizes": batch["image_sizes"]}


def traced_functions(name):
    """Names of the traced functions in TensorFlow's context that contain ``name``."""
    from tensorflow.python.eager import context
    return {f for f in context.context().list_function_names() if name in f}


def check_build(case):
    m = case.build()
    assert m.mask_type == case.mask_type
    assert all(layer.built for layer in m._flatten_layers())
    m.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
    assert m.optimizer.built and len(m.optimizer.variables) > len(m.trainable_variables)


def check_training_forward(case, model):
    batch = case.batch((2, 0))
    outputs = model(batch, training=True)
    losses = model.compute_losses(outputs)
    assert set(losses) == set(case.loss_names)
    for name, value in losses.items():
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()), name
    labels = outputs["roi_classes" if "roi_classes" in outputs else "labels"].numpy()
    assert (labels[0] > 0).any() and (labels[1] <= 0).all()  # no GT: no positive


def check_every_weight_gets_a_gradient(case, model):
    support_models.assert_every_weight_gets_a_gradient(model, case.batch((3, 3)))


def check_fit_one_step(case):
    m = case.build()
    m.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
    dataset = tf.data.Dataset.from_tensors(case.batch((3, 3))).repeat(2)
    before = [v.numpy().copy() for v in m.trainable_variables]
    traced_before = traced_functions("one_step_on_data")
    history = m.fit(dataset, epochs=1, verbose=0)
    assert len(traced_functions("one_step_on_data") - traced_before) == 1
    assert set(history.history) >= {"loss", *(f"{n}_loss" for n in case.loss_names)}
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    unchanged = [v.path for a, v in zip(before, m.trainable_variables)
                 if np.array_equal(a, v.numpy())]
    assert not unchanged, unchanged


def check_inference_outputs(case, model):
    out = model(inference_inputs(case.batch((1, 1))))
    assert set(out) == set(case.output_keys)
    n, classes = out["num_detections"].numpy(), out["classes"].numpy()
    for i in range(len(n)):
        assert (classes[i, :n[i]] > 0).all() and (classes[i, n[i]:] == 0).all()


def check_detect(case):
    m = build_model(case.config(**case.detect_overrides), category_ids=CATEGORY_IDS)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
              for h, w in ((100, 150), (180, 90), (75, 190))]
    found = 0
    for image, result in zip(images, m.detect(images)):
        n = len(result["scores"])
        found += n
        h, w = image.shape[:2]
        assert result["boxes"].shape == (n, 4) and result["masks"].shape == (n, h, w)
        assert result["masks"].dtype == bool
        assert set(result["labels"].tolist()) <= set(CATEGORY_IDS)
        if n:
            assert (result["boxes"][:, 0::2] >= -1e-3).all()
            assert (result["boxes"][:, 2] <= w + 1e-3).all()
            assert (result["boxes"][:, 3] <= h + 1e-3).all()
    assert found > 0
    assert len(m._detect_fn._list_all_concrete_functions()) == 1  # any size, one trace


def _assert_same_outputs(expected, got):
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


def check_keras_round_trip(case, model, tmp_path):
    inputs = inference_inputs(case.batch((1, 1)))
    expected = model(inputs)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    _assert_same_outputs(expected, loaded(inputs))


def check_weights_round_trip(case, model, tmp_path):
    inputs = inference_inputs(case.batch((1, 1)))
    expected = model(inputs)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    other = case.build()
    other.load_weights(path)
    _assert_same_outputs(expected, other(inputs))


def check_accel_matches_plain(case):
    overrides = dict(case.detect_overrides)
    plain = case.build(**overrides, **{"model.accel": '"off"'})
    fast = case.build(**overrides, **{"model.accel": '"on"'})
    fast.set_weights(plain.get_weights())
    assert_same_inference_outputs(plain, fast, case.batch((1, 1)))
