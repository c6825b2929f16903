"""YOLACT on every backbone the config accepts: one ``builders.build_resnet`` for both
architectures, so ResNeXt, ``stride_in_1x1`` and ``bn_eps`` reach YOLACT's ResNet; the YOLACT
converter refuses a ResNeXt checkpoint (the reference has ResNet backbones only) instead of
reading grouped kernels as a ResNet's.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model, builders
from keras_maskrcnn.convert import yolact as convert_yolact
from keras_maskrcnn.layers.frozen_batch_norm import FrozenBatchNorm
from support.models import synthetic_batch, tiny_config, tiny_yolact_config

OPTIONS = {"model.backbone.name": "resnext50_32x4d", "model.backbone.stride_in_1x1": "true",
           "model.backbone.bn_eps": 0.0}


def _frozen_bns(layer):
    return [x for x in layer._flatten_layers(include_self=False) if isinstance(x, FrozenBatchNorm)]


def test_every_backbone_option_reaches_yolact():
    m = build_model(tiny_yolact_config(**OPTIONS), build=False)
    assert m.backbone.groups == 32 and m.backbone.width_per_group == 4
    assert m.backbone.stride_in_1x1 and m.backbone.stages[1][0].conv1.strides == (2, 2)
    assert {bn.epsilon for bn in _frozen_bns(m.backbone)} == {0.0}
    # the same function builds Mask R-CNN's: equal configs for equal backbone sections
    mask_rcnn = build_model(tiny_config(**OPTIONS, **{"model.backbone.width_multiplier": 0.25,
                                                      "model.backbone.freeze_at": 0}),
                            build=False)
    assert mask_rcnn.backbone.get_config() == m.backbone.get_config()
    assert builders.build_resnet(tiny_yolact_config(**OPTIONS).model.backbone).get_config() \
        == m.backbone.get_config()


@pytest.mark.slow
def test_resnext101_yolact_trains_a_step_and_converts_nothing_wrongly():
    """Issue 22's check: a YOLACT on ResNeXt-101 32x8d builds, trains a step, and the YOLACT
    converter refuses its grouped layout (read as a checkpoint) instead of taking it for a
    ResNet-101's, and refuses a ResNet-101 checkpoint for it, leaving its weights alone."""
    cfg = tiny_yolact_config(**{"model.backbone.name": "resnext101_32x8d",
                                "model.backbone.width_multiplier": 0.125, "input.size": 64})
    m = build_model(cfg)
    assert len(m.backbone.stages[2]) == 23 and m.backbone.groups == 32
    m.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False)
    grouped = m.backbone.stages[2][0].conv2
    before = grouped.kernel.numpy().copy()
    batch = synthetic_batch(num_gt=(2, 1), size=64, num_keypoints=0)
    history = m.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert not np.array_equal(before, grouped.kernel.numpy())
    with pytest.raises(ValueError, match=r"a grouped \(ResNeXt, 32 groups\) backbone"):
        convert_yolact.infer_settings(_reference_layout(m))
    resnet101 = build_model(tiny_yolact_config(**{
        "model.backbone.name": "resnet101", "model.backbone.width_multiplier": 0.125,
        "input.size": 64}))
    weights = [w.copy() for w in m.get_weights()]
    with pytest.raises(ValueError, match=r"shape mismatch for 'backbone.layers.0.0.conv"):
        convert_yolact.load_yolact_weights(m, _reference_layout(resnet101))
    assert all(np.array_equal(a, b) for a, b in zip(weights, m.get_weights()))


class _ShapeRecorder:
    """Stands in for ``StateDictReader``: records the reference key table of a built model as
    zero arrays of the checkpoint's shapes (a state_dict the converter would read)."""

    def __init__(self):
        self.state_dict = {}

    def read(self, variable, key, to_keras=None, torch_shape=None):
        self.state_dict[key] = np.zeros(tuple(torch_shape or variable.shape), np.float32)

    def has(self, key):
        return False

    def consume_if_present(self, key):
        pass


def _reference_layout(model):
    recorder = _ShapeRecorder()
    convert_yolact.read_yolact(recorder, model)
    return recorder.state_dict


@pytest.fixture(scope="module")
def tiny_pair():
    """(ResNet-50, ResNeXt-50 32x4d) tiny YOLACTs, built."""
    return tuple(build_model(tiny_yolact_config(**{"model.backbone.name": name}))
                 for name in ("resnet50", "resnext50_32x4d"))


def test_converter_refuses_a_resnext_checkpoint(tiny_pair):
    resnet, resnext = tiny_pair
    settings = convert_yolact.infer_settings(_reference_layout(resnet))
    assert settings["depth"] == "resnet50"
    with pytest.raises(ValueError, match=r"backbone.layers.0.0.conv2.weight takes 1 input "
                                         r"channels of conv1's 32: a grouped \(ResNeXt, 32 "
                                         r"groups\) backbone"):
        convert_yolact.infer_settings(_reference_layout(resnext))


def test_resnet_checkpoint_into_a_resnext_yolact_names_the_key(tiny_pair):
    resnet, resnext = tiny_pair
    before = [w.copy() for w in resnext.get_weights()]
    with pytest.raises(ValueError, match=r"shape mismatch for 'backbone.layers.0.0.conv1.weight'"):
        convert_yolact.load_yolact_weights(resnext, _reference_layout(resnet))
    assert all(np.array_equal(a, b) for a, b in zip(before, resnext.get_weights()))
