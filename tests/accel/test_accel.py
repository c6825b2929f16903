"""keras_maskrcnn.accel: the switch (``resolve``) and ``accelerate``'s swap of Keras layers."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import accel, build_model
from keras_maskrcnn.accel.layers import CpuConv2D, CpuConv2DTranspose, CpuDense
from support.accel import assert_same_inference_outputs
from support.models import synthetic_batch, tiny_config

CPU_CLASSES = (CpuConv2D, CpuConv2DTranspose, CpuDense)


def test_resolve_on_off_and_auto_by_visible_devices(monkeypatch):
    assert accel.resolve("on") is True and accel.resolve("off") is False
    visible = {"GPU": [], "TPU": []}
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind: visible[kind])
    assert accel.resolve("auto") is True  # CPU only
    visible["GPU"] = ["/device:GPU:0"]
    assert accel.resolve("auto") is False and accel.resolve("on") is True
    visible.update(GPU=[], TPU=["/device:TPU:0"])
    assert accel.resolve("auto") is False
    with pytest.raises(ValueError, match="auto"):
        accel.resolve("yes")


class _OwnConv(keras.layers.Conv2D):
    """A user subclass: not a plain Keras layer, never swapped."""


def _small_model():
    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="same3x3")(x)
    b = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="strided")(a)
    c = keras.layers.Conv2DTranspose(4, 2, strides=2, name="block")(b)
    d = keras.layers.Conv2DTranspose(2, 4, strides=2, name="overlap")(c)
    e = _OwnConv(2, 1, name="own")(d)
    f = keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(e))
    return keras.Model(x, f)


def test_accelerate_swaps_eligible_layers_only_and_keeps_values():
    plain, fast = _small_model(), _small_model()
    fast.set_weights(plain.get_weights())
    configs = {layer.name: layer.get_config() for layer in fast.layers}
    swapped = accel.accelerate(fast)
    kinds = {layer.name: type(layer) for layer in fast.layers}
    assert kinds["same3x3"] is CpuConv2D and kinds["block"] is CpuConv2DTranspose
    assert kinds["fc"] is CpuDense and len(swapped) == 3
    assert kinds["strided"] is keras.layers.Conv2D  # no matmul gradient for stride 2
    assert kinds["overlap"] is keras.layers.Conv2DTranspose and kinds["own"] is _OwnConv
    assert not any(isinstance(layer, CPU_CLASSES) for layer in plain.layers)
    for layer in fast.layers:  # names and Keras config kept (CpuConv2D adds its flag)
        config = {k: v for k, v in layer.get_config().items() if k != "winograd"}
        assert config == configs[layer.name], layer.name
    assert not fast.get_layer("same3x3").winograd  # only roi_heads get Winograd
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), tf.float32)
    results = []
    for model in (plain, fast):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) ** 2)
        results.append([loss, *tape.gradient(loss, model.trainable_variables)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    assert accel.accelerate(fast) == []  # idempotent: nothing plain is left to swap


@pytest.fixture(scope="module")
def models():
    """The tiny model built with the switch off and on, with the same weights."""
    settings = {"model.roi_heads.score_threshold": 0.0}
    # quoted: YAML 1.1 reads a bare on / off as a bool, which the config rejects
    plain = build_model(tiny_config(**settings, **{"model.accel": '"off"'}))
    fast = build_model(tiny_config(**settings, **{"model.accel": '"on"'}))
    fast.set_weights(plain.get_weights())
    return plain, fast


def _heads(model):
    return (model.mask_head, model.keypoint_head)


def test_switch_off_builds_plain_keras_and_on_swaps_the_model(models):
    plain, fast = models
    assert not any(isinstance(layer, CPU_CLASSES) for layer in plain._flatten_layers())
    assert all(head.inference_chunk is None for head in _heads(plain))
    layers = list(fast._flatten_layers())
    assert all(type(layer) is CpuConv2D for head in _heads(fast) for layer in head.convs)
    assert type(fast.box_head.fcs[0]) is CpuDense
    assert type(fast.box_predictor.cls_score) is CpuDense
    assert type(fast.mask_predictor.conv5_mask) is CpuConv2DTranspose  # 2x2, stride 2
    assert type(fast.keypoint_predictor.kps_score_lowres) is keras.layers.Conv2DTranspose
    assert type(fast.backbone.stem_conv) is keras.layers.Conv2D  # 7x7 stride 2: not eligible
    assert any(type(layer) is CpuConv2D for layer in fast.backbone._flatten_layers())
    assert any(type(layer) is CpuConv2D for layer in fast.fpn._flatten_layers())
    assert any(type(layer) is CpuConv2D for layer in fast.rpn_head._flatten_layers())
    head_convs = {id(conv) for head in _heads(fast) for conv in head.convs}
    winograd = {id(layer) for layer in layers if getattr(layer, "winograd", False)}
    assert winograd == head_convs  # exactly the mask and keypoint heads' 3x3 convs
    assert all(head.inference_chunk == accel.INFERENCE_CHUNK for head in _heads(fast))


def test_switch_gives_the_same_outputs(models):
    plain, fast = models
    assert_same_inference_outputs(plain, fast, synthetic_batch(num_gt=(1, 1)))


def test_weight_files_are_the_same_with_and_without(models, tmp_path):
    """Keras keys a listed layer's weights by its class name: the swap must not change it."""
    plain, fast = models
    assert type(fast.box_head.fcs[0]).__name__ == "Dense"  # reported as Keras' class
    for source, target_setting in ((fast, '"off"'), (plain, '"on"')):
        path = str(tmp_path / f"{target_setting.strip(chr(34))}.weights.h5")
        source.save_weights(path)
        target = build_model(tiny_config(**{"model.accel": target_setting}))
        target.load_weights(path)
        for a, b in zip(target.get_weights(), source.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_keras_file_loads_with_its_switch(models, tmp_path):
    """``MaskRCNN.from_config`` goes through ``build_model``: the setting travels in the file."""
    for model in models:
        path = str(tmp_path / "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded.box_head.fcs[0]) is type(model.box_head.fcs[0])
        assert loaded.mask_head.inference_chunk == model.mask_head.inference_chunk
        assert loaded.name == model.name
