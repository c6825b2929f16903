"""convert.weights: fine-tuning to another class count (and keypoint count) from our own
``.weights.h5`` / ``.keras`` files, on the tiny Mask R-CNN and a small YOLACT.

The checks: the class-specific layers keep exactly their fresh initialisation, every other
weight equals the file's, one warning line names the skipped layers with both shapes; any
other mismatch is an error naming the layer and both shapes and assigns nothing.
"""
import logging
import numpy as np
import pytest

import test_imports
from keras_maskrcnn import builders, config as config_lib
from keras_maskrcnn.convert import state_dict as state_dict_lib, torchvision as tv
from keras_maskrcnn.convert import torchvision_models, weights as weights_lib

THREE_KEYPOINTS = ["model.keypoint_head.num_keypoints=3",
                   "model.keypoint_head.keypoint_names=[a,b,c]",
                   "model.keypoint_head.flip_pairs=[]", "model.keypoint_head.skeleton=[]"]
YOLACT_SMALL = ["model.backbone.width_multiplier=0.25", "model.fpn.channels=32",
                "model.yolact.num_prototypes=8", "input.size=96"]


def values(model):
    """{path without the model's name: array}."""
    prefix = model.name + "/"
    return {v.path[len(prefix):] if v.path.startswith(prefix) else v.path: v.numpy()
            for v in model.weights}


def build(path, overrides=()):
    return builders.build_model(config_lib.load_config(path, list(overrides)))


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """The tiny 4-class, 4-keypoint model, saved as .weights.h5 and .keras, and its values."""
    tmp = tmp_path_factory.mktemp("weights")
    model = build("configs/tiny.yaml")
    model.save_weights(str(tmp / "tiny.weights.h5"))
    model.save(str(tmp / "tiny.keras"))
    return {"h5": str(tmp / "tiny.weights.h5"), "keras": str(tmp / "tiny.keras"),
            "values": values(model), "model": model}


@pytest.fixture(scope="module")
def three_classes():
    """A fresh tiny model with 3 classes and 3 keypoints, and its initial values (the loads
    below never change its class layers, the rest they set to the file's each time)."""
    model = build("configs/tiny.yaml", ["model.num_classes=3", *THREE_KEYPOINTS])
    return model, values(model)


def check_fine_tuned(model, fresh, source, skipped_layers):
    """Skipped layers' weights equal the fresh ones, every other weight the file's."""
    for path, value in values(model).items():
        layer = path.split("/")[-2]
        expected = fresh[path] if layer in skipped_layers else source[path]
        np.testing.assert_array_equal(value, expected, err_msg=path)
    assert any(not np.array_equal(fresh[p], source[p]) for p in source if p in fresh)


@pytest.mark.parametrize("kind", ["h5", "keras"])
def test_another_class_count_keeps_the_class_layers_fresh(tiny_files, three_classes, kind,
                                                          caplog):
    model, fresh = three_classes
    with caplog.at_level(logging.WARNING, logger="keras_maskrcnn"):
        skipped = weights_lib.load_weights(model, tiny_files[kind])
    expected = ("bbox_pred", "cls_score", "kps_score_lowres", "mask_fcn_logits")
    assert sorted(skipped) == list(expected)
    check_fine_tuned(model, fresh, tiny_files["values"], expected)
    records = [r for r in caplog.records if r.name == "keras_maskrcnn"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert "\n" not in line and tiny_files[kind] in line
    for name in expected:
        assert name in line
    assert "cls_score (64, 4) vs (64, 3)" in line and "kps_score_lowres (4, 4, 4, 16) vs " \
                                                      "(4, 4, 3, 16)" in line


def test_same_class_count_loads_silently(tiny_files, caplog):
    with caplog.at_level(logging.INFO, logger="keras_maskrcnn"):
        assert weights_lib.load_weights(tiny_files["model"], tiny_files["keras"]) == ()
    assert not [r for r in caplog.records if r.name == "keras_maskrcnn"]


def test_other_mismatches_name_layer_and_shapes_and_assign_nothing(tiny_files):
    model = build("configs/tiny.yaml", ["model.num_classes=3", "model.box_head.fc_dim=32",
                                        "model.mask_head.conv_dim=8"])
    fresh = values(model)
    with pytest.raises(ValueError, match=r"tiny\.weights\.h5 does not fit the model: layer "
                                         r"'fc6': file shapes vs model shapes \(1568, 64\) vs "
                                         r"\(1568, 32\)") as error:
        weights_lib.load_weights(model, tiny_files["h5"])
    # a class layer whose input width differs is an error too, not a skip
    assert ("layer 'mask_fcn_logits': file shapes vs model shapes (1, 1, 16, 4) vs "
            "(1, 1, 8, 3)") in str(error.value)
    for path, value in values(model).items():
        np.testing.assert_array_equal(value, fresh[path], err_msg=path)


def test_file_errors_name_the_file(tmp_path, tiny_files):
    model = tiny_files["model"]
    with pytest.raises(ValueError, match=r"model.weights x\.pth: expected a \.weights\.h5 or "
                                         r"\.keras file \(convert it first"):
        weights_lib.load_weights(model, "x.pth", what="model.weights")
    with pytest.raises(FileNotFoundError, match="--weights: no such file: .*missing.weights.h5"):
        weights_lib.load_weights(model, str(tmp_path / "missing.weights.h5"))
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"junk\.weights\.h5: cannot be read as Keras weights"):
        weights_lib.load_weights(model, str(junk))


def test_initial_weights_from_the_config(tiny_files, three_classes, caplog):
    model, fresh = three_classes
    cfg = config_lib.load_config("configs/tiny.yaml", ["model.num_classes=3", *THREE_KEYPOINTS,
                                                       f"model.weights={tiny_files['h5']}"])
    with caplog.at_level(logging.WARNING, logger="keras_maskrcnn"):
        skipped = weights_lib.load_initial_weights(model, cfg.model)
    assert len(skipped) == 4 and "model.weights" in caplog.records[0].getMessage()
    check_fine_tuned(model, fresh, tiny_files["values"], skipped)
    missing = config_lib.apply_overrides(cfg, ["model.weights=nowhere.weights.h5"])
    with pytest.raises(FileNotFoundError, match="model.weights: no such file: nowhere"):
        weights_lib.load_initial_weights(model, missing.model)


def test_yolact_class_confidences_and_semantic_head_stay_fresh(tmp_path, caplog):
    source = build("configs/yolact_shapes.yaml", YOLACT_SMALL)
    source.save_weights(str(tmp_path / "y.weights.h5"))
    model = build("configs/yolact_shapes.yaml", [*YOLACT_SMALL, "model.num_classes=3"])
    fresh = values(model)
    with caplog.at_level(logging.WARNING, logger="keras_maskrcnn"):
        skipped = weights_lib.load_weights(model, str(tmp_path / "y.weights.h5"))
    assert sorted(skipped) == ["class_logits", "semantic_seg"]
    check_fine_tuned(model, fresh, values(source), skipped)
    assert "class_logits (3, 3, 32, 12) vs (3, 3, 32, 9)" in caplog.records[0].getMessage()


def test_builders_import_no_converter():
    """The one arrow that ran back up (builders -> convert) is gone: the jobs load weights."""
    graph = test_imports.import_graph()
    assert not [m for m in graph["keras_maskrcnn.builders"] if ".convert" in m]
    assert "keras_maskrcnn.convert.weights" in graph["keras_maskrcnn.run"]


class _KeyRecorder(state_dict_lib.StateDictReader):
    """Records the torchvision key and torch-layout shape of every weight a loader reads."""

    def __init__(self):
        super().__init__({})
        self.shapes = {}

    def has(self, key):
        return False  # the current (>= 0.13) key layout

    def read(self, variable, key, to_keras=None, torch_shape=None):
        self.shapes[key] = tuple(torch_shape or variable.shape)

    def check_no_leftover(self, prefix, ignore_prefixes=()):
        pass


def torchvision_layout(model, seed=0):
    """A random state_dict in torchvision's key layout for ``model`` (the loaders' own table)."""
    recorder = _KeyRecorder()
    tv.load_resnet_fpn_weights(model.backbone, model.fpn, {}, reader=recorder)
    tv.load_rpn_head_weights(model.rpn_head, {}, reader=recorder)
    tv.load_box_head_weights(model.box_head, model.box_predictor, {}, reader=recorder)
    tv.load_mask_head_weights(model.mask_head, model.mask_predictor, {}, reader=recorder)
    tv.load_keypoint_head_weights(model.keypoint_head, model.keypoint_predictor, {},
                                  reader=recorder)
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in recorder.shapes.items()}


def test_torchvision_conversion_is_all_or_nothing(tiny_files):
    """A bad key in the last part read leaves every weight as it was (the converter used to
    commit the backbone, RPN and box head before reading the mask head)."""
    model = tiny_files["model"]
    state_dict = torchvision_layout(model)
    before = values(model)
    key = "roi_heads.mask_predictor.mask_fcn_logits.weight"
    bad = dict(state_dict, **{key: state_dict[key][:, :-1]})
    with pytest.raises(ValueError, match=f"shape mismatch for '{key}'"):
        torchvision_models.load_torchvision_weights(model, bad)
    for path, value in values(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
    torchvision_models.load_torchvision_weights(model, state_dict)
    np.testing.assert_array_equal(model.backbone.stem_conv.kernel.numpy(),
                                  state_dict["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))
