"""The one post-processing contract (keras_maskrcnn.postprocessing.Postprocessor): hand-computed
cases of each setting, and the builders wiring the config into ``model.postprocessor``."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model
from keras_maskrcnn.postprocessing import Postprocessor
from support.models import tiny_config, tiny_yolact_config


def _outputs(masks_shape=(1, 2, 4, 4)):
    """Two rows, one real: box (10, 20, 30, 40) in a 50x100 resized input, class 2."""
    return {"boxes": tf.constant([[[10., 20., 30., 40.], [1., 1., 2., 2.]]]),
            "scores": tf.constant([[0.9, 0.1]]), "classes": tf.constant([[2, 1]]),
            "num_detections": tf.constant([1]), "masks": tf.ones(masks_shape)}


def test_serving_outputs_scale_map_ids_and_zero_padding():
    post = Postprocessor(category_ids=(11, 22, 33))
    result = post.serving_outputs(_outputs(), tf.constant([[50, 100]]), tf.constant([[100, 400]]))
    np.testing.assert_allclose(result["boxes"][0], [[40, 40, 120, 80], [0, 0, 0, 0]])
    np.testing.assert_array_equal(result["classes"], [[22, 0]])
    np.testing.assert_allclose(result["scores"], [[0.9, 0.0]])
    np.testing.assert_array_equal(result["original_sizes"], [[100, 400]])
    assert not result["masks"][0, 1].numpy().any() and result["masks"][0, 0].numpy().all()


def test_clip_and_integer_boxes():
    outputs = dict(_outputs(), boxes=tf.constant([[[-4.5, 20.7, 130.0, 60.0],
                                                   [0., 0., 0., 0.]]]))
    sizes, original = tf.constant([[50, 100]]), tf.constant([[50, 100]])
    plain = Postprocessor().serving_outputs(outputs, sizes, original)["boxes"][0, 0]
    clipped = Postprocessor(clip_boxes=True).serving_outputs(outputs, sizes, original)
    image = Postprocessor(mask_kind="image").serving_outputs(outputs, sizes, original)
    np.testing.assert_allclose(plain, [-4.5, 20.7, 130.0, 60.0])
    np.testing.assert_allclose(clipped["boxes"][0, 0], [0.0, 20.7, 100.0, 50.0])
    np.testing.assert_allclose(image["boxes"][0, 0], [0.0, 20.0, 100.0, 50.0])  # truncated


def test_detections_paste_box_and_image_masks():
    """Box masks: ones pasted into the box (torchvision's expansion adds a border pixel at
    most); image masks: resized to the image, > threshold."""
    sizes = tf.constant([[50, 100]])
    box = Postprocessor().detections(_outputs(), sizes, tf.constant([50, 100]))
    assert box["masks"].shape == (1, 50, 100) and box["labels"].numpy().tolist() == [2]
    on = np.argwhere(box["masks"].numpy()[0])
    assert on[:, 0].min() >= 19 and on[:, 0].max() <= 40 and on[:, 1].min() >= 9
    image_masks = np.zeros((1, 2, 4, 4), np.float32)
    image_masks[0, 0, :2, :2] = 1.0  # the top-left quarter of the image
    image = Postprocessor(mask_kind="image").detections(
        _outputs(image_masks.shape) | {"masks": tf.constant(image_masks)}, sizes,
        tf.constant([8, 12]))
    want = np.zeros((8, 12), bool)
    want[:4, :6] = True  # half-pixel bilinear: rows 0-3 (row 3 samples 1.25: 0.75), columns
    # 0-5 (column 5 samples 4/3: 0.67; column 6 samples 5/3: 0.33)
    want[3, 5] = False  # 0.75 * 2/3 = 0.5 exactly: not > the 0.5 threshold
    np.testing.assert_array_equal(image["masks"].numpy()[0], want)


def test_keypoint_offset_only_in_coco_results():
    post = Postprocessor(keypoint_offset=-0.5)
    keypoints = np.array([[[10.0, 20.0, 0.3], [1.0, 2.0, -np.inf]]])
    shifted = post.coco_detections({"keypoints": keypoints, "scores": np.ones(1)})["keypoints"]
    np.testing.assert_allclose(shifted[0], [[9.5, 19.5, 0.3], [1.0, 2.0, -np.inf]])
    np.testing.assert_array_equal(keypoints[0, 0], [10.0, 20.0, 0.3])  # input untouched
    outputs = dict(_outputs(), keypoints=tf.constant([[[[10., 20., .3]], [[1., 1., 1.]]]]))
    served = post.serving_outputs(outputs, tf.constant([[50, 100]]), tf.constant([[50, 100]]))
    np.testing.assert_allclose(served["keypoints"][0, 0, 0], [10.0, 20.0, 0.3], rtol=1e-6)


def test_categories_checked_and_named():
    with pytest.raises(ValueError, match="category_names has 1 names for 2"):
        Postprocessor(category_ids=(3, 7), category_names=("cat",))
    with pytest.raises(ValueError, match="mask_kind"):
        Postprocessor(mask_kind="polygon")
    with pytest.raises(ValueError, match="paste"):
        Postprocessor(paste="d2")
    post = Postprocessor(category_ids=[3, 7], category_names=["cat", "dog"])
    assert post.category_ids == (3, 7) and post.category_name(7) == "dog"
    assert post.category_name(5) == "5" and Postprocessor().category_name(2) == "2"
    with pytest.raises(ValueError, match="category_ids has 2 entries; the model has 3"):
        post.check_num_classes(4)


def test_builders_wire_the_config_into_the_model_postprocessor():
    m = build_model(tiny_config(**{"model.mask_head.paste": "detectron2",
                                   "model.mask_head.threshold": 0.4,
                                   "input.resize_style": "detectron2"}),
                    category_ids=[11, 22, 33], build=False)
    assert m.postprocessor == Postprocessor("box", 0.4, "detectron2", True, 0.0, (11, 22, 33))
    y = build_model(tiny_yolact_config(**{"model.yolact.mask_threshold": 0.3}), build=False)
    assert (y.postprocessor.mask_kind, y.postprocessor.mask_threshold) == ("image", 0.3)
    m.category_ids = [1, 2, 3]  # the model's attribute is the postprocessor's
    assert m.postprocessor.category_ids == (1, 2, 3) and m.category_ids == [1, 2, 3]
    m.category_names = ["a", "b", "c"]
    rebuilt = type(m).from_config(m.get_config())
    assert dataclasses.asdict(rebuilt.postprocessor) == dataclasses.asdict(m.postprocessor)
    m.category_ids = m.category_names = None  # None clears them (identity, no names)
    assert (m.postprocessor.category_ids, m.postprocessor.category_names) == (None, None)
