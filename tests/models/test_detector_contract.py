"""The detector contract (tests/support/detectors.py) on both architectures: the tiny Mask /
Keypoint R-CNN (configs/tiny.yaml: masks and 4 keypoints) and the tiny YOLACT
(configs/yolact_shapes.yaml shrunk): build, training forward, every weight gets a gradient,
fit one step, inference outputs, detect, ``.keras`` and ``.weights.h5`` round trips, accel on
== off. Architecture-specific behaviour stays in tests/models/test_model.py and
test_yolact_model.py.
"""
import pytest

from support import detectors
from support import models as support_models
from support.detectors import DetectorCase

# YOLACT GT sizes for every level: ~50 px (P5), ~100 px (P6), the whole image (P7), small (P3,
# P4); image i takes its first num_gt[i] boxes.
EVERY_LEVEL = [[(0, 0, 128, 128), (14, 14, 114, 114), (30, 40, 80, 90)],
               [(5, 5, 25, 21), (60, 70, 95, 100), (20, 70, 70, 120)]]


def yolact_batch(num_gt):
    """Noise images with the first ``num_gt[i]`` EVERY_LEVEL boxes filled (classes 1..3)."""
    batch = support_models.synthetic_batch(num_gt=(0,) * len(num_gt), num_keypoints=0)
    for i, n in enumerate(num_gt):
        for j, (x1, y1, x2, y2) in enumerate(EVERY_LEVEL[i][:n]):
            batch["gt_boxes"][i, j] = [x1, y1, x2, y2]
            batch["gt_classes"][i, j] = 1 + j % 3
            batch["gt_masks"][i, j, y1:y2, x1:x2] = 1
            batch["images"][i, y1:y2, x1:x2] = 60.0 * (j + 1)
    return batch


CASES = [
    DetectorCase(
        "mask_rcnn", support_models.tiny_config,
        lambda num_gt: support_models.synthetic_batch(num_gt=num_gt),
        loss_names=("rpn_objectness", "rpn_box", "box_classification", "box_regression",
                    "mask", "keypoint"),
        output_keys=("boxes", "scores", "classes", "num_detections", "masks", "keypoints"),
        mask_type="box", detect_overrides={"model.roi_heads.score_threshold": 0.0}),
    DetectorCase(
        "yolact", support_models.tiny_yolact_config, yolact_batch,
        loss_names=("class", "box", "mask", "semantic"),
        output_keys=("boxes", "scores", "classes", "num_detections", "masks"),
        mask_type="image", detect_overrides={"model.yolact.score_threshold": 0.0}),
]


@pytest.fixture(scope="module", params=CASES, ids=repr)
def case_and_model(request):
    return request.param, request.param.build()


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_build(case):
    detectors.check_build(case)


def test_training_forward(case_and_model):
    detectors.check_training_forward(*case_and_model)


def test_every_weight_gets_a_gradient(case_and_model):
    detectors.check_every_weight_gets_a_gradient(*case_and_model)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_fit_one_step(case):
    detectors.check_fit_one_step(case)


def test_inference_outputs(case_and_model):
    detectors.check_inference_outputs(*case_and_model)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_detect(case):
    detectors.check_detect(case)


def test_keras_round_trip(case_and_model, tmp_path):
    detectors.check_keras_round_trip(*case_and_model, tmp_path)


def test_weights_round_trip(case_and_model, tmp_path):
    detectors.check_weights_round_trip(*case_and_model, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_accel_on_matches_off(case):
    detectors.check_accel_matches_plain(case)
