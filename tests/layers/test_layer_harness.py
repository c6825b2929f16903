"""The layer harness (tests/support/layers.py) on every serializable layer of keras_maskrcnn.layers.

Maps have sizes not divisible by 32 (an image of 100x75: C2 25x19 .. C5 4x3). Each case states
its expectations: the sampler and the post-processors have no variables beyond a seed state, the
proposal generator takes unbatched anchors, the FPN's convs take the global dtype policy (not its
``dtype`` argument), and the dtype the outputs have under ``mixed_bfloat16`` (bfloat16 for the
FPN and the conv towers, float32 for predictors and geometry).
"""
import numpy as np
import pytest

from keras_maskrcnn.layers.anchor_generator import AnchorGenerator, YOLACTAnchorGenerator
from keras_maskrcnn.layers.dense_detection import AnchorMatcher, DenseDetectionGenerator
from keras_maskrcnn.layers.dense_head import DenseHead
from keras_maskrcnn.layers.detection_generator import DetectionGenerator
from keras_maskrcnn.layers.fpn import FPN
from keras_maskrcnn.layers.frozen_batch_norm import FrozenBatchNorm
from keras_maskrcnn.layers.heads import (BoxHead, BoxPredictor, KeypointHead, KeypointPredictor,
                                         MaskHead, MaskPredictor)
from keras_maskrcnn.layers.protonet import Protonet
from keras_maskrcnn.layers.roi_pooler import RoIPooler
from keras_maskrcnn.layers.roi_sampler import RoISampler
from keras_maskrcnn.layers.rpn import ProposalGenerator, RPNHead
from support import layers as harness
from support.layers import LayerCase

B = 2
C_SIZES = {"C2": (25, 19), "C3": (13, 10), "C4": (7, 5), "C5": (4, 3)}
YOLACT = dict(input_levels=("C3", "C4", "C5"), max_level=7, extra_levels="conv",
              top_down="bilinear", output_relu=True)


def _maps(rng, sizes, channels):
    return {k: rng.normal(size=(B, h, w, channels)).astype(np.float32)
            for k, (h, w) in sizes.items()}


def _boxes(rng, n, size=60.0):
    xy = rng.uniform(0, size / 2, (B, n, 2))
    wh = rng.uniform(4, size / 2, (B, n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _rois(rng, r, p, c):
    return rng.normal(size=(B, r, p, p, c)).astype(np.float32)


def _proposal_inputs(rng):
    sizes = {"P2": (13, 10), "P3": (7, 5)}
    n = sum(h * w * 3 for h, w in sizes.values())
    anchors = _boxes(rng, n)[0]
    return (rng.normal(size=(B, n)).astype(np.float32),
            0.1 * rng.normal(size=(B, n, 4)).astype(np.float32), anchors,
            np.array([13 * 10 * 3, 7 * 5 * 3], np.int32), np.full((B, 2), 60, np.int32))


def _sampler_inputs(rng):
    gt_classes = np.array([[1, 2, -1], [3, -1, -1]], np.int32)
    gt_boxes = np.where(gt_classes[..., None] > 0, _boxes(rng, 3), -1.0).astype(np.float32)
    return _boxes(rng, 40), rng.uniform(size=(B, 40)) > 0.2, gt_boxes, gt_classes


def _detection_inputs(rng):
    r, k = 12, 4
    return (rng.normal(size=(B, r, k)).astype(np.float32),
            0.1 * rng.normal(size=(B, r, k, 4)).astype(np.float32), _boxes(rng, r),
            rng.uniform(size=(B, r)) > 0.2, np.full((B, 2), 60, np.int32))


def _anchor_inputs(levels):
    """An image of 100x75 and its maps of ``levels`` (sizes as C_SIZES)."""
    def inputs(rng):
        sizes = {level: C_SIZES["C" + level[1:]] for level in levels}
        return (rng.normal(size=(B, 100, 75, 3)).astype(np.float32), _maps(rng, sizes, 2))
    return inputs


def _pooler_inputs(levels):
    def inputs(rng):
        sizes = {level: C_SIZES["C" + level[1:]] for level in levels}
        return _maps(rng, sizes, 3), _boxes(rng, 5, size=90.0)
    return inputs


def _dense_anchors(rng, n=30):
    return _boxes(rng, n)[0]


def _matcher_inputs(rng):
    gt_classes = np.array([[1, 2, -1], [3, -1, -1]], np.int32)
    gt_boxes = np.where(gt_classes[..., None] > 0, _boxes(rng, 3), -1.0).astype(np.float32)
    return _dense_anchors(rng), gt_boxes, gt_classes


def _dense_detection_inputs(rng):
    return (0.1 * rng.normal(size=(B, 30, 4)).astype(np.float32),
            rng.normal(size=(B, 30, 4)).astype(np.float32), _dense_anchors(rng))


CASES = [
    LayerCase("fpn", lambda **kw: FPN(8, **kw), lambda rng: (_maps(rng, C_SIZES, 4),),
              mixed_output_dtype="bfloat16", dtype_argument_reaches_sublayers=False),
    LayerCase("fpn_yolact", lambda **kw: FPN(8, **YOLACT, **kw),
              lambda rng: (_maps(rng, {k: C_SIZES[k] for k in YOLACT["input_levels"]}, 4),),
              mixed_output_dtype="bfloat16", dtype_argument_reaches_sublayers=False),
    LayerCase("dense_head", lambda **kw: DenseHead(
        3, {"class_logits": 4, "box_deltas": 4, "mask_coefficients": 5}, num_convs=2,
        output_activations={"mask_coefficients": "tanh"}, **kw),
        lambda rng: (_maps(rng, {"P3": (13, 10), "P4": (7, 5)}, 6),)),
    LayerCase("rpn_head", lambda **kw: RPNHead(3, **kw),
              lambda rng: (_maps(rng, {"P2": (13, 10), "P3": (7, 5)}, 6),)),
    LayerCase("proposal_generator", lambda **kw: ProposalGenerator(50, 50, 20, 20, **kw),
              _proposal_inputs, unbatched=(2, 3), has_weights=False, keras_file=False),
    LayerCase("roi_sampler", lambda **kw: RoISampler(batch_size_per_image=16, seed=4, **kw),
              _sampler_inputs, has_weights=False),
    LayerCase("detection_generator", lambda **kw: DetectionGenerator(
        detections_per_image=10, **kw), _detection_inputs, has_weights=False),
    LayerCase("box_head", lambda **kw: BoxHead(2, 16, **kw), lambda rng: (_rois(rng, 3, 7, 4),),
              mixed_output_dtype="bfloat16"),
    LayerCase("box_predictor", lambda **kw: BoxPredictor(3, **kw),
              lambda rng: (rng.normal(size=(B, 3, 16)).astype(np.float32),)),
    LayerCase("box_predictor_agnostic", lambda **kw: BoxPredictor(3, class_agnostic=True, **kw),
              lambda rng: (rng.normal(size=(B, 3, 16)).astype(np.float32),)),
    LayerCase("mask_head", lambda **kw: MaskHead(2, 8, **kw), lambda rng: (_rois(rng, 3, 9, 4),),
              mixed_output_dtype="bfloat16"),
    LayerCase("mask_head_chunked", lambda **kw: MaskHead(2, 8, inference_chunk=2, **kw),
              lambda rng: (_rois(rng, 3, 9, 4),), mixed_output_dtype="bfloat16"),
    LayerCase("mask_predictor", lambda **kw: MaskPredictor(3, 8, **kw),
              lambda rng: (_rois(rng, 3, 9, 8),)),
    LayerCase("keypoint_head", lambda **kw: KeypointHead(2, 8, **kw),
              lambda rng: (_rois(rng, 3, 9, 4),), mixed_output_dtype="bfloat16"),
    LayerCase("keypoint_predictor", lambda **kw: KeypointPredictor(5, **kw),
              lambda rng: (_rois(rng, 3, 9, 8),)),
    LayerCase("protonet", lambda **kw: Protonet(4, channels=6, **kw),
              lambda rng: (rng.normal(size=(B, 13, 10, 6)).astype(np.float32),)),
    LayerCase("anchor_generator", lambda **kw: AnchorGenerator(("P2", "P3"), ((8,), (16,)),
                                                               **kw),
              _anchor_inputs(("P2", "P3")), has_weights=False),
    LayerCase("anchor_generator_c4", lambda **kw: AnchorGenerator(
        ("C4",), ((8, 16, 32),), rounded=False, nominal_strides=True, **kw),
        _anchor_inputs(("C4",)), has_weights=False),
    LayerCase("yolact_anchor_generator", lambda **kw: YOLACTAnchorGenerator(
        (24, 48), square=False, **kw), _anchor_inputs(("P3", "P4")), has_weights=False),
    LayerCase("roi_pooler", lambda **kw: RoIPooler(5, ("P2", "P3", "P4"), **kw),
              _pooler_inputs(("P2", "P3", "P4")), has_weights=False),
    LayerCase("roi_pooler_c4", lambda **kw: RoIPooler(
        4, ("C4",), level_mapping="detectron2", sampling_ratio=0, aligned=True, **kw),
        _pooler_inputs(("C4",)), has_weights=False),
    LayerCase("anchor_matcher", lambda **kw: AnchorMatcher(**kw), _matcher_inputs,
              unbatched=(0,), has_weights=False, keras_file=False),
    LayerCase("dense_detection_generator", lambda **kw: DenseDetectionGenerator(
        detections_per_image=6, **kw), _dense_detection_inputs, unbatched=(2,),
        has_weights=False, keras_file=False),
    LayerCase("frozen_batch_norm", lambda **kw: FrozenBatchNorm(**kw),
              lambda rng: (rng.normal(size=(B, 13, 10, 4)).astype(np.float32),),
              mixed_output_dtype="bfloat16"),
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
