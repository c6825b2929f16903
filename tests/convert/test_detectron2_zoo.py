"""detectron2 import without weights: the restricted .pkl reader, the layout helpers, the
model-zoo table and the configs it writes (configs/detectron2/)."""
import os
import pickle

import numpy as np
import pytest

from keras_maskrcnn import build_model, config as config_lib
from keras_maskrcnn.convert import detectron2 as d2
from keras_maskrcnn.convert import detectron2_zoo as zoo
from keras_maskrcnn.convert.yolact import COCO_CATEGORY_IDS
from support import CONFIGS

D2_CONFIGS = os.path.join(CONFIGS, "detectron2")


# ------------------------------------------------------------------------------ the reader
@pytest.mark.parametrize("protocol", [2, 4])
def test_reader_returns_the_model_arrays(tmp_path, protocol):
    model = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "a.num_batches_tracked": np.zeros((), np.int64)}
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "x", "matching_heuristics": True}, f,
                    protocol=protocol)
    loaded = d2.load_detectron2_pkl(path)
    assert sorted(loaded) == sorted(model)
    for key, value in model.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype


class _Code:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_reader_refuses_other_globals_naming_the_file(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _Code()}}, f, protocol=2)
    with pytest.raises(d2.Detectron2Error, match=f"{path}.*refusing to unpickle the global "
                                                 f"(posix|os|nt).system"):
        d2.load_detectron2_pkl(path)


def test_reader_refuses_non_checkpoints(tmp_path):
    path = tmp_path / "blobs.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {}}, f)
    with pytest.raises(d2.Detectron2Error, match="expected a dict with a 'model' dict"):
        d2.load_detectron2_pkl(path)
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.array(["a"], object)}}, f)
    with pytest.raises(d2.Detectron2Error, match="'w' is not a numeric array"):
        d2.load_detectron2_pkl(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(d2.Detectron2Error, match="corrupt pickle"):
        d2.load_detectron2_pkl(path)


def test_ignored_keys():
    for key in ("backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked", "pixel_mean",
                "pixel_std", "proposal_generator.anchor_generator.cell_anchors.0"):
        assert d2.ignored(key)
    assert not d2.ignored("backbone.bottom_up.res2.0.conv1.norm.running_mean")


# ------------------------------------------------------------------------- layout helpers
def test_anchor_permutation_inverts_detectron2_order():
    """A location's anchors written size-major (detectron2) come back ratio-major (ours)."""
    from support.d2_layout import _anchor_order
    sizes, ratios = 5, 3
    ours = np.arange(sizes * ratios)  # our anchor a = r * S + s holds value a
    theirs = ours[_anchor_order(sizes, ratios)]  # detectron2 index s * R + r
    assert theirs[1] == 1 * sizes + 0  # d2 anchor (s=0, r=1) is our r * S + s = 5
    np.testing.assert_array_equal(theirs[d2.anchor_permutation(sizes, ratios)], ours)
    deltas = np.repeat(theirs, 4) * 4 + np.tile(np.arange(4), sizes * ratios)  # 4 per anchor
    back = d2._permute_rows(deltas, d2.anchor_permutation(sizes, ratios), 4)
    np.testing.assert_array_equal(back, np.arange(4 * sizes * ratios))


def test_class_rows():
    logits = np.array([[1.0], [2.0], [3.0]])  # person, car, background
    np.testing.assert_array_equal(d2.background_first(logits)[:, 0], [3, 1, 2])
    deltas = np.ones((8, 2))  # 2 foreground classes x 4
    padded = d2.with_background_rows(deltas, 4)
    assert padded.shape == (12, 2) and not padded[:4].any() and padded[4:].all()


def test_stem_input_channels_reversed():
    weight = np.arange(2 * 3 * 1 * 1, dtype=np.float32).reshape(2, 3, 1, 1)  # BGR input
    kernel = d2.reversed_input_channels(weight)  # (1, 1, 3, 2), RGB input
    np.testing.assert_array_equal(kernel[0, 0, :, 0], weight[0, ::-1, 0, 0])


# -------------------------------------------------------------------------- the zoo table
def test_lookup_full_short_and_unsupported_names():
    entry = zoo.lookup("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x")
    assert zoo.lookup("mask_rcnn_R_50_FPN_3x") is entry
    assert zoo.lookup("mask_rcnn_R_50_FPN_3x.yaml") is entry
    assert (entry.box_ap, entry.mask_ap) == (41.0, 37.2)
    assert entry.url.endswith("/137849600/model_final_f10217.pkl")
    for name in ("mask_rcnn_R_50_DC5_3x", "COCO-Detection/retinanet_R_50_FPN_1x", "nope"):
        with pytest.raises(ValueError, match="unsupported detectron2 config.*supported:\n.*"
                                             "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x"):
            zoo.lookup(name)
    assert len({e.short_name for e in zoo.MODEL_ZOO.values()}) == len(zoo.MODEL_ZOO) == 19


def test_zoo_configs_reproduce_detectron2():
    fpn = zoo.zoo_config("mask_rcnn_R_50_FPN_3x")
    m, i = fpn.model, fpn.input
    assert (m.num_classes, m.category_ids) == (81, COCO_CATEGORY_IDS)
    assert (m.backbone.stride_in_1x1, m.backbone.bn_eps, m.backbone.variant) == (True, 1e-5,
                                                                                  "fpn")
    assert (m.rpn.pre_nms_top_n_test, m.rpn.post_nms_top_n_test) == (1000, 1000)
    assert (m.rpn.post_nms_top_n_train, m.rpn.smooth_l1_beta) == (1000, 0.0)
    assert (m.rpn.proposal_filter, m.rpn.min_size) == ("detectron2", 0.0)
    assert (m.roi_align.sampling_ratio, m.roi_align.aligned,
            m.roi_align.level_mapping) == (0, True, "detectron2")
    assert (m.anchors.rounded, m.anchors.nominal_strides) == (False, True)
    assert (m.roi_heads.score_threshold, m.roi_heads.nms_threshold,
            m.roi_heads.detections_per_image, m.roi_heads.min_size) == (0.05, 0.5, 100, 0.0)
    assert (m.mask_head.paste, i.resize_style, i.size_divisor) == ("detectron2", "detectron2",
                                                                   32)
    np.testing.assert_allclose(np.array(i.pixel_mean) * 255, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(np.array(i.pixel_std) * 255, [1, 1, 1])
    assert (i.min_size_test, i.max_size, i.min_size_train) == (800, 1333, (640, 672, 704, 736,
                                                                           768, 800))
    assert (fpn.train.total_steps, fpn.train.lr_decay_steps) == (270000, (210000, 250000))
    c4 = zoo.zoo_config("faster_rcnn_R_50_C4_1x").model
    assert (c4.backbone.variant, c4.rpn.pre_nms_top_n_test, c4.rpn.post_nms_top_n_test) == (
        "c4", 6000, 1000)
    assert zoo.zoo_config("faster_rcnn_R_50_C4_1x").input.size_divisor == 1
    assert not c4.mask_head.enabled and len(c4.anchors.sizes) == 5
    x101 = zoo.zoo_config("mask_rcnn_X_101_32x8d_FPN_3x")
    assert not x101.model.backbone.stride_in_1x1
    np.testing.assert_allclose(np.array(x101.input.pixel_std) * 255, [58.395, 57.12, 57.375])
    kp = zoo.zoo_config("keypoint_rcnn_R_50_FPN_3x").model
    assert (kp.num_classes, kp.category_ids, kp.keypoint_head.score,
            kp.keypoint_head.coordinate_offset) == (2, (1,), "detectron2", -0.5)
    assert kp.keypoint_head.category_ids == (1,)
    assert (kp.rpn.post_nms_top_n_train, kp.roi_heads.smooth_l1_beta) == (1500, 0.5)
    city = zoo.zoo_config("mask_rcnn_R_50_FPN")
    assert (city.model.num_classes, city.model.category_ids) == (9, None)
    assert (city.input.min_size_test, city.input.max_size, city.train.batch_size) == (1024,
                                                                                      2048, 8)
    other = zoo.zoo_config("mask_rcnn_R_50_FPN_3x", num_classes=21)
    assert other.model.category_ids is None  # not COCO's 80 classes: contiguous ids


def test_config_files_equal_what_the_table_writes(tmp_path):
    written = zoo.write_config_files(tmp_path)
    assert sorted(os.listdir(D2_CONFIGS)) == sorted(os.path.basename(p) for p in written)
    for path in written:
        with open(path) as f, open(os.path.join(D2_CONFIGS, os.path.basename(path))) as g:
            assert f.read() == g.read(), f"{path}: regenerate with detectron2_zoo." \
                                         f"write_config_files('configs/detectron2')"


@pytest.mark.parametrize("name", sorted(os.listdir(D2_CONFIGS)))
def test_every_detectron2_config_builds(name):
    cfg = config_lib.load_config(os.path.join(D2_CONFIGS, name))
    assert cfg == zoo.zoo_config(name[:-5])
    model = build_model(cfg, build=False)
    assert model.num_classes == cfg.model.num_classes
    assert (model.fpn is None) == (cfg.model.backbone.variant == "c4")
