"""Keypoints only for the categories that have them (model.keypoint_head.category_ids) and
detectron2's keypoint settings (score, coordinate_offset), on the tiny model.

The model with keypoint categories [1] and the same weights with every class having keypoints
("all") are run side by side: what differs is exactly the feature, so each test fails when it
is switched off.
"""
import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model, builders, config, evaluation, predict, visualize
from keras_maskrcnn.data import coco, synthetic
from keras_maskrcnn.models.mask_rcnn import MaskRCNN
from support import ROOT
from support.models import synthetic_batch, tiny_config

IDS = [1, 3, 7]  # the synthetic dataset's category ids; only 1 has keypoints here
OVERRIDES = {"model.roi_heads.score_threshold": 0.0, "model.category_ids": IDS}


def _config(**extra):
    return tiny_config(**{**OVERRIDES, **extra})


@pytest.fixture(scope="module")
def models():
    """{"person": keypoint categories [1], "all": every class, same weights (seeded; a
    class-score layer of unit-variance weights, so detections are of several classes)}."""
    keras.utils.set_random_seed(0)
    person = build_model(_config(**{"model.keypoint_head.category_ids": [1]}))
    kernel = person.box_predictor.cls_score.kernel
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype(np.float32))
    every = build_model(_config())
    every.set_weights(person.get_weights())
    return {"person": person, "all": every}


def _inputs(seed=0):
    batch = synthetic_batch(num_gt=(1, 1), seed=seed)
    return {"images": batch["images"], "image_sizes": batch["image_sizes"]}


def test_inference_masks_the_keypoints_of_other_classes(models):
    inputs = _inputs()
    out = {name: m(inputs) for name, m in models.items()}
    classes = out["person"]["classes"].numpy()
    np.testing.assert_array_equal(classes, out["all"]["classes"].numpy())
    kp, ref = out["person"]["keypoints"].numpy(), out["all"]["keypoints"].numpy()
    person, other = classes == 1, classes > 1  # (B, D); padding rows are class 0
    assert person.any() and other.any()
    np.testing.assert_array_equal(kp[person], ref[person])
    np.testing.assert_array_equal(kp[other][..., :2], 0.0)
    assert np.all(kp[other][..., 2] == -np.inf)
    assert np.all(np.isfinite(ref[other]))  # switched off: every class has keypoints


def test_training_targets_of_other_classes_are_invalid(models):
    batch = synthetic_batch(num_gt=(3, 2))  # classes 1, 2, 3 (dataset 1, 3, 7), all visible
    tf.random.set_seed(0)
    out = models["person"](batch, training=True)
    valid, fg = out["keypoint_valid"].numpy(), out["fg_roi_classes"].numpy()  # (B, F', Kp)
    assert (fg == 1).any() and (fg > 1).any()
    assert not valid[fg > 1].any() and valid[fg == 1].any()
    assert np.isfinite(models["person"].compute_losses(out)["keypoint"].numpy())
    tf.random.set_seed(0)
    out = models["all"](batch, training=True)
    fg = out["fg_roi_classes"].numpy()
    assert out["keypoint_valid"].numpy()[fg > 1].any()  # switched off: trained


def test_unknown_keypoint_category_is_an_error():
    with pytest.raises(ValueError, match=r"keypoint_category_ids \[5\]"):
        build_model(tiny_config(**{"model.keypoint_head.category_ids": [5]}), build=False)
    with pytest.raises(config.ConfigError, match="keypoint_head.category_ids"):
        _config(**{"model.keypoint_head.category_ids": [2]})  # not in model.category_ids
    with pytest.raises(config.ConfigError, match="category_ids"):
        _config(**{"model.keypoint_head.category_ids": []})


def test_categories_survive_get_config(models):
    rebuilt = MaskRCNN.from_config(models["person"].get_config())
    assert rebuilt.keypoint_category_ids == [1] and rebuilt.category_ids == IDS
    assert rebuilt.keypoint_classes() == (False, True, False, False)
    assert models["all"].keypoint_classes() == (False, True, True, True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The synthetic dataset with keypoints on category 1 only (3 val images of 128 px)."""
    root = tmp_path_factory.mktemp("shapes")
    paths = synthetic.write_synthetic_dataset(str(root), 1, 3, image_size=128, min_objects=3,
                                              max_objects=4, keypoint_categories=[1])
    return root, paths


def test_synthetic_categories_and_dataset_keypoint_ids(shapes):
    root, paths = shapes
    with open(paths["val"][0]) as f:
        data = json.load(f)
    declared = {c["id"]: "keypoints" in c for c in data["categories"]}
    assert declared == {1: True, 3: False, 7: False}
    assert all(("keypoints" in a) == (a["category_id"] == 1) for a in data["annotations"])
    source = coco.load_coco(*paths["val"], num_keypoints=4)
    assert source.categories.keypoint_category_ids == (1,)
    for record in source.images:  # the other categories' GT keypoints are unlabelled
        assert np.all(record.keypoints[record.classes != 1][..., 2] == 0)
    cfg = builders.with_dataset_keypoint_categories(_config(), source.categories)
    assert cfg.model.keypoint_head.category_ids == (1,)
    every = coco.CategoryMap.from_categories(synthetic._categories({1, 3, 7}))
    assert every.keypoint_category_ids is None
    assert builders.with_dataset_keypoint_categories(_config(), every) == _config()


def test_coco_results_and_drawings_hold_keypoints_of_person_only(models, shapes, tmp_path):
    root, paths = shapes
    for name, m in models.items():
        out = tmp_path / name
        evaluation.evaluate_model(m, paths["val"][0], paths["val"][1], output_dir=str(out),
                                  progress=False, verbose=False)
        with open(out / "results.json") as f:
            results = json.load(f)
        with_kp = {r["category_id"] for r in results if "keypoints" in r}
        detected = {r["category_id"] for r in results}
        assert 1 in detected and len(detected) > 1
        assert with_kp == ({1} if name == "person" else detected)
    image = np.asarray(predict.read_image(str(root / "val" / "000001.jpg")))
    for name, m in models.items():
        result = m.detect([image])[0]
        other = result["labels"] != 1
        assert other.any()
        only_other = {k: v[other] for k, v in result.items()}
        plain = {k: v for k, v in only_other.items() if k != "keypoints"}
        drawn = [visualize.draw_detections(image, r, score_threshold=0.0,
                                           keypoint_threshold=-1e30)
                 for r in (only_other, plain)]
        # No keypoint pixels for the non-keypoint detections (switched off: there are).
        assert np.array_equal(drawn[0], drawn[1]) == (name == "person")


def test_predict_takes_keypoint_categories_from_the_json(models, shapes, tmp_path, monkeypatch):
    root, paths = shapes
    cfg_overrides = [f"{k}={v}" for k, v in OVERRIDES.items() if k != "model.category_ids"]
    weights = str(tmp_path / "w.weights.h5")
    models["all"].save_weights(weights)
    built, build = [], builders.build_model

    def build_and_keep(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(builders, "build_model", build_and_keep)
    argv = ["--config", str(tmp_path / "c.yaml"), "--weights", weights, "--image",
            str(root / "val" / "000001.jpg"), "--output", str(tmp_path / "o.png"),
            "--annotations", paths["val"][0]]
    config.save_config(tiny_config(), argv[1])
    result = predict.main(argv + [a for o in cfg_overrides for a in ("--set", o)])
    assert built[0].keypoint_category_ids == [1] and built[0].category_ids == IDS
    other = result["labels"] != 1
    assert other.any() and np.all(result["keypoints"][other][..., 2] == -np.inf)


def test_evaluate_cli_takes_keypoint_categories_from_the_json(models, shapes, tmp_path):
    sys.path.insert(0, ROOT)
    try:
        import evaluate as cli
    finally:
        sys.path.remove(ROOT)
    root, _ = shapes
    weights = str(tmp_path / "w.weights.h5")
    models["all"].save_weights(weights)
    path = str(tmp_path / "c.yaml")
    config.save_config(tiny_config(), path)
    argv = ["--config", path, "--weights", weights, "--output", str(tmp_path / "eval"),
            "--set", f"data.synthetic.output_dir={root}", "model.roi_heads.score_threshold=0"]
    assert cli.main(argv) == 0
    with open(os.path.join(tmp_path, "eval", "results.json")) as f:
        results = json.load(f)
    assert len({r["category_id"] for r in results}) > 1
    assert {r["category_id"] for r in results if "keypoints" in r} == {1}


def test_detectron2_score_and_coordinate_offset(models, tmp_path):
    """detectron2's keypoint score; its -0.5 offset only in COCO results (its COCO evaluator's
    convention): ``detect`` and the export give the predictor's keypoints (no offset), and
    ``evaluate_model``'s results.json carries the offset."""
    d2 = build_model(_config(**{"model.keypoint_head.score": "detectron2",
                                "model.keypoint_head.coordinate_offset": -0.5}))
    d2.set_weights(models["all"].get_weights())
    assert d2.keypoint_score == "detectron2" and d2.postprocessor.keypoint_offset == -0.5
    image = np.random.default_rng(3).integers(0, 255, (96, 150, 3), dtype=np.uint8)
    ours, ref = d2.detect([image])[0], models["all"].detect([image])[0]
    assert len(ref["scores"]) > 0
    np.testing.assert_array_equal(ours["keypoints"][..., :2], ref["keypoints"][..., :2])
    assert np.all((ours["keypoints"][..., 2] > 0) & (ours["keypoints"][..., 2] <= 1))
    assert not np.allclose(ours["keypoints"][..., 2], ref["keypoints"][..., 2])
    # COCO results: x and y shifted by the model's offset (score unchanged)
    import PIL.Image
    PIL.Image.fromarray(image).save(tmp_path / "a.png")
    gt = {"images": [{"id": 5, "file_name": "a.png", "height": 96, "width": 150}],
          "annotations": [], "categories": [{"id": i, "name": str(i), "keypoints": (
              [f"k{k}" for k in range(17)] if i == 1 else [])} for i in IDS]}
    evaluation.evaluate_model(d2, gt, str(tmp_path), output_dir=str(tmp_path / "eval"),
                              iou_types=("bbox",), progress=False, verbose=False)
    with open(tmp_path / "eval" / "results.json") as f:
        results = json.load(f)
    assert len(results) == len(ours["scores"])
    with_kp = [(r, k) for r, k in zip(results, ours["keypoints"]) if "keypoints" in r]
    assert with_kp
    for r, kp in with_kp:
        written = np.asarray(r["keypoints"]).reshape(-1, 3)
        np.testing.assert_allclose(written[:, :2], kp[:, :2] - 0.5, rtol=0, atol=1e-4)
        np.testing.assert_allclose(written[:, 2], kp[:, 2], rtol=1e-6)
    absent = {"keypoints": np.array([[[10.0, 20.0, 0.5]], [[0.0, 0.0, -np.inf]]])}
    shifted = d2.postprocessor.coco_detections(absent)["keypoints"]  # absent ones left alone
    np.testing.assert_allclose(shifted[0, 0], [9.5, 19.5, 0.5])
    np.testing.assert_array_equal(shifted[1, 0], [0.0, 0.0, -np.inf])
    # The export returns the predictor's keypoints too, and leaves absent ones alone.
    outputs = {"boxes": tf.zeros([1, 2, 4]), "scores": tf.ones([1, 2]),
               "classes": tf.constant([[1, 2]]), "num_detections": tf.constant([2]),
               "keypoints": tf.constant([[[[10.0, 20.0, 0.5]], [[0.0, 0.0, -np.inf]]]])}
    served = d2.postprocessor.serving_outputs(outputs, tf.constant([[50, 50]]),
                                              tf.constant([[100, 200]]))["keypoints"].numpy()
    np.testing.assert_allclose(served[0, 0, 0], [10.0 * 4, 20.0 * 2, 0.5])
    np.testing.assert_array_equal(served[0, 1, 0], [0.0, 0.0, -np.inf])
