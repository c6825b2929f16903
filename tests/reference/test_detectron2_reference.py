"""Our detectron2 conversion against the REAL detectron2 (built by tests/reference/setup.sh).

For R50-FPN, R50-C4, X101-32x8d-FPN Mask R-CNN and Keypoint R-CNN R50-FPN: seeded random
weights (support.d2_oracle's recipe, calibrated on the photos so that features stay in range
and each photo yields tens of detections) are written as a model-zoo ``.pkl``; detectron2's
``DefaultPredictor`` loads it (every key checked equal) and runs its path on BGR input
(``ResizeShortestEdge`` with PIL, the model, ``detector_postprocess``); our converter CLI
(``python -m keras_maskrcnn.convert detectron2``) converts the same file and ``detect`` runs on
the RGB photo. Photos need resizing both ways (reference_common.asset_photos: the
package's astronaut is shrunk, its coffee and a crop enlarged). Both sides use the zoo config
with the test sizes (shorter side 288, longer at most 480: CPU time), score threshold 0.01.

Bars: >= 99% of detectron2's detections matched and >= 99% of ours (same label, box IoU >=
0.98, score within 1e-3; support.detections), matched mask IoU >= 0.97, keypoints within
0.5 px. Keypoint near-ties are left out and counted: where the two boxes differ in ceil(side)
at the resized size (the heatmap is resampled to that many pixels), detectron2's own
``heatmaps_to_keypoints`` decodes its heatmaps at our box; a keypoint still off by > 0.5 px
with its score equal within 1e-4 relative is an argmax near-tie.

Shape shorthand: n detectron2 detections, m ours, H0 x W0 photo, Kp keypoints.
"""
import os
import time

import numpy as np
import pytest

from reference_common import asset_photos, print_row, summarise

pytestmark = pytest.mark.reference

SIZE, MAX_SIZE, SCORE_THRESHOLD = 288, 480, 0.01
CASES = {  # our zoo name, detectron2's config file, the oracle's recipe
    "R50-FPN": ("mask_rcnn_R_50_FPN_3x", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
                dict(kind="mask", backbone="resnet50", c4=False, num_classes=21)),
    "R50-C4": ("mask_rcnn_R_50_C4_3x", "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml",
               dict(kind="mask", backbone="resnet50", c4=True, num_classes=21)),
    "X101-FPN": ("mask_rcnn_X_101_32x8d_FPN_3x",
                 "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
                 dict(kind="mask", backbone="resnext101_32x8d", c4=False, num_classes=21)),
    "Keypoint-R50-FPN": ("keypoint_rcnn_R_50_FPN_3x",
                         "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml",
                         dict(kind="keypoint", backbone="resnet50", c4=False, num_classes=2)),
}


def _seeded_checkpoint(torch, recipe, photos, path):
    """Seeded random weights in detectron2's layout, written as a model-zoo pickle."""
    from convert.test_detectron2 import build_oracle, d2_resize
    from support.d2_layout import to_detectron2, write_pkl
    resized = {name: d2_resize(image, SIZE, MAX_SIZE) for name, image in photos.items()}
    oracle = build_oracle(torch, dict(recipe, size=SIZE), resized)
    state = to_detectron2(oracle.state_dict(), c4=recipe["c4"],
                          num_sizes=5 if recipe["c4"] else 1)
    write_pkl(path, state, extras=False)
    return state


def _predictor(torch, root, config_file, checkpoint, state, num_classes):
    """detectron2's DefaultPredictor on the CPU with the test sizes; every weight checked."""
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(root, "configs", config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = str(checkpoint)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes - 1
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = SCORE_THRESHOLD
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = SIZE, MAX_SIZE
    predictor = DefaultPredictor(cfg)
    loaded = predictor.model.state_dict()
    assert set(loaded) == set(state), sorted(set(loaded) ^ set(state))[:10]
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)
    return predictor


def _run_detectron2(torch, predictor, image):
    """detectron2's predictor on the BGR photo -> numpy detections in original pixels."""
    with torch.no_grad():
        instances = predictor(np.ascontiguousarray(image[..., ::-1]))["instances"]
    out = {"boxes": instances.pred_boxes.tensor.numpy(), "scores": instances.scores.numpy(),
           "labels": instances.pred_classes.numpy() + 1}  # ours: contiguous ids from 1
    if instances.has("pred_masks"):
        out["masks"] = instances.pred_masks.numpy()
    if instances.has("pred_keypoints"):
        out["keypoints"] = instances.pred_keypoints[..., :2].numpy()
        out["keypoint_scores"] = instances.pred_keypoints[..., 2].numpy()
        out["heatmaps"] = instances.pred_keypoint_heatmaps
    return out


def keypoint_errors(torch, reference, ours, pairs, image_size, resized_size):
    """(distances of the compared keypoints, count of near-ties left out); module docstring."""
    from detectron2.structures.keypoints import heatmaps_to_keypoints
    if not pairs:
        return np.zeros(0), 0
    i, j = [p[0] for p in pairs], [p[1] for p in pairs]
    scale = np.array([image_size[1] / resized_size[1], image_size[0] / resized_size[0]])
    ref_boxes = reference["boxes"][i] / np.tile(scale, 2)  # back at the resized size
    our_boxes = ours["boxes"][j] / np.tile(scale, 2)
    at_ours = heatmaps_to_keypoints(reference["heatmaps"][i],
                                    torch.as_tensor(our_boxes, dtype=torch.float32)).numpy()

    def ceil_sizes(boxes):
        return np.ceil(np.maximum(boxes[:, 2:] - boxes[:, :2], 1))

    same = (ceil_sizes(ref_boxes) == ceil_sizes(our_boxes)).all(1)[:, None]  # (k, 1)
    target = np.where(same[..., None], reference["keypoints"][i], at_ours[..., :2] * scale)
    target_scores = np.where(same, reference["keypoint_scores"][i], at_ours[..., 3])
    dist = np.linalg.norm(target - ours["keypoints"][j][..., :2], axis=-1)  # (k, Kp)
    our_scores = ours["keypoints"][j][..., 2]
    tie = (dist > 0.5) & (np.abs(target_scores - our_scores)
                          <= 1e-4 * np.maximum(1.0, np.abs(our_scores)))
    return dist[~tie], int(tie.sum())


@pytest.mark.parametrize("name", list(CASES))
def test_against_real_detectron2(name, detectron2_root, tmp_path):
    torch = pytest.importorskip("torch")
    from convert.test_detectron2 import convert_cli
    from keras_maskrcnn import build_model, load_config
    from keras_maskrcnn.preprocessing import detectron2_output_size
    zoo_name, config_file, recipe = CASES[name]
    photos = asset_photos()
    start = time.perf_counter()
    checkpoint = tmp_path / "model_final.pkl"
    state = _seeded_checkpoint(torch, recipe, photos, checkpoint)
    predictor = _predictor(torch, detectron2_root, config_file, checkpoint, state,
                           recipe["num_classes"])
    overrides = (f"input.min_size_test={SIZE}", f"input.max_size={MAX_SIZE}",
                 f"input.min_size_train=[{SIZE}]",
                 f"model.roi_heads.score_threshold={SCORE_THRESHOLD}")
    convert_cli(checkpoint, tmp_path / "converted", zoo_name, overrides)
    model = build_model(load_config(str(tmp_path / "converted" / "config.yaml")))
    model.load_weights(str(tmp_path / "converted" / "model.weights.h5"))
    rows = []
    for photo, image in photos.items():
        reference = _run_detectron2(torch, predictor, image)
        ours = model.detect([image])[0]
        resized = tuple(int(v) for v in detectron2_output_size(*image.shape[:2], SIZE, MAX_SIZE))
        errors = None
        if "keypoints" in reference:
            errors = lambda pairs: keypoint_errors(torch, reference, ours, pairs,  # noqa: E731
                                                   image.shape[:2], resized)
        rows.append(summarise(f"{name}/{photo} {image.shape[0]}x{image.shape[1]}", reference,
                              ours, errors))
    seconds = time.perf_counter() - start
    print_row(name, rows, seconds)
    for row in rows:
        assert row["reference"] >= 20, row  # tens of detections per photo
        assert row["ref_matched"] >= 0.99 and row["ours_matched"] >= 0.99, row
        if recipe["kind"] == "mask":
            assert row["min_mask_iou"] >= 0.97, row
        else:
            assert row["max_keypoint_error"] <= 0.5, row
            assert row["near_ties"] <= 0.01 * row["keypoints"], row
