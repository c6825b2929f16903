"""The layer harness (tests/support/layers.py) on models/: ResNet, ResNetBlock and Res5Head.

An input of 70x90 (not divisible by 32: C5 is 3x3). The backbone's convs and norms take the global
dtype policy, not the ``dtype`` argument (``builders.build_model`` sets the global one).
"""
import numpy as np
import pytest

from keras_maskrcnn.models.backbones import ResNet, ResNetBlock
from keras_maskrcnn.models.res5_head import Res5Head
from support import layers as harness
from support.layers import LayerCase

B = 2


def _image(rng):
    return (rng.normal(size=(B, 70, 90, 3)).astype(np.float32),)


def _map(rng):
    return (rng.normal(size=(B, 13, 10, 4)).astype(np.float32),)


CASES = [
    LayerCase("resnet18", lambda **kw: ResNet(18, width_multiplier=0.25, **kw), _image,
              mixed_output_dtype="bfloat16", dtype_argument_reaches_sublayers=False),
    LayerCase("resnet50_freeze3", lambda **kw: ResNet(50, width_multiplier=0.125, freeze_at=3,
                                                      **kw), _image,
              mixed_output_dtype="bfloat16", dtype_argument_reaches_sublayers=False),
    LayerCase("block_basic", lambda **kw: ResNetBlock(8, 2, "basic", True, **kw), _map,
              mixed_output_dtype="bfloat16", dtype_argument_reaches_sublayers=False),
    LayerCase("block_bottleneck", lambda **kw: ResNetBlock(8, 1, "bottleneck", True, **kw),
              _map, mixed_output_dtype="bfloat16", dtype_argument_reaches_sublayers=False),
    LayerCase("res5_head", lambda **kw: Res5Head(50, width_multiplier=0.125, **kw),
              lambda rng: (rng.normal(size=(B, 3, 6, 6, 128)).astype(np.float32),),
              mixed_output_dtype="bfloat16", dtype_argument_reaches_sublayers=False),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_config_round_trip(case, rng):
    harness.check_config_round_trip(case, rng)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_keras_file_round_trip(case, rng, tmp_path):
    harness.check_keras_file_round_trip(case, rng, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_symbolic_shapes_equal_eager(case, rng):
    harness.check_symbolic_shapes(case, rng)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_mixed_bfloat16_policy(case, rng):
    harness.check_dtype_policy(case, rng)
