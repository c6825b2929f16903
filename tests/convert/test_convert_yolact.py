"""``convert/yolact.py``: reference YOLACT checkpoints -> our ``YOLACT``.

The reference is tests/support/yolact_torch_reference.py: the reference's module tree (so its
state_dict has the checkpoint's keys) with seeded random weights whose activations stay O(1),
ResNet-50, K = 5 classes, k = 32 prototypes, at a 150 x 150 input (C3..C5 = 19, 10, 5: the
10 -> 19 top-down is not a doubling) instead of 550 to keep CPU time sane; the code paths are
the same at any size. The torch side saves it with ``torch.save(state_dict)``; the converter
reads that file without torch (a child process in which importing torch fails).

Bars: every checkpoint key is read into exactly one weight and every weight is set, with the
key table's shapes; raw outputs (box deltas, class scores, coefficients, prototypes) within
1e-4 relative error; detections as tests/integration/test_parity.py: >= 95% of the reference's matched
(same label, IoU >= 0.98, |score diff| <= 1e-3), matched masks IoU >= 0.95.

Shape shorthand: K classes incl. background, k prototypes, N anchors, n detections.
"""
import os
import re
import types

import keras
import numpy as np
import pytest

import keras_maskrcnn
from keras_maskrcnn.convert import torchvision as tv
from keras_maskrcnn.convert import yolact as convert_yolact
from support.detections import (DETECTION_FRACTION, DETECTION_IOU, MASK_IOU, SCORE_TOL,
                                mask_iou, match_detections, relative_error)

NUM_CLASSES, NUM_PROTOTYPES, SIZE = 5, 32, 150
PHOTOS = ("coffee", "astronaut")
BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def fake_state_dict(depth="resnet101", num_classes=81, num_prototypes=32, num_anchors=3):
    """Shapes only (zero-size-cheap arrays) of the reference keys that the inference reads."""
    state = {}
    for i, count in enumerate(BLOCKS[depth]):
        for b in range(count):
            state[f"backbone.layers.{i}.{b}.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    head = "prediction_layers.0."
    for name, rows in (("bbox_layer", num_anchors * 4), ("conf_layer", num_anchors * num_classes),
                       ("mask_layer", num_anchors * num_prototypes)):
        state[f"{head}{name}.weight"] = np.zeros((rows, 0, 3, 3), np.float32)
    return state


@pytest.mark.parametrize("depth", ["resnet50", "resnet101"])
def test_settings_are_inferred_from_the_checkpoint(depth):
    settings = convert_yolact.infer_settings(fake_state_dict(depth))
    assert settings == {"depth": depth, "image_size": 550, "anchor_sides": (24, 48, 96, 192, 384),
                        "num_anchors": 3, "num_classes": 81, "num_prototypes": 32}
    small = convert_yolact.infer_settings(fake_state_dict(depth, num_classes=21,
                                                          num_prototypes=16))
    assert (small["num_classes"], small["num_prototypes"]) == (21, 16)
    other = "yolact_base" if depth == "resnet50" else "yolact_resnet50"
    assert convert_yolact.infer_settings(fake_state_dict(depth), other)["depth"] == \
        convert_yolact.ARCHITECTURES[other][0]


def test_architecture_from_the_file_name_and_its_config():
    """The reference's eval.py takes the config from the weights' name (SavePath); the
    im400 / im700 models use truncated anchor sides int(s / 550 * size) at their size."""
    name = convert_yolact.arch_from_filename
    assert name("weights/yolact_im700_54_800000.pth") == "yolact_im700"
    assert name("yolact_resnet50_54_800000.pth") == "yolact_resnet50"
    assert name("yolact_base_2_interrupt.pth") == "yolact_base"
    assert name("yolact_darknet53_54_800000.pth") is None  # not convertible: depth decides
    assert name("my_model.pth") is None
    for arch, size in (("yolact_im400", 400), ("yolact_im700", 700)):
        settings = convert_yolact.infer_settings(fake_state_dict("resnet101"), arch)
        assert settings["anchor_sides"] == tuple(int(s / 550 * size)
                                                 for s in (24, 48, 96, 192, 384))
        cfg = convert_yolact.yolact_config(settings)
        assert cfg.input.size == size
        sides = np.array(cfg.model.yolact.anchor_scales) * size / 550  # the model's rule
        np.testing.assert_allclose(sides, settings["anchor_sides"], rtol=1e-12)


def test_settings_errors_name_the_problem():
    state = fake_state_dict()
    del state["backbone.layers.2.22.conv1.weight"]
    with pytest.raises(ValueError, match="backbone.layers.2 has 22 blocks"):
        convert_yolact.infer_settings(state)
    with pytest.raises(ValueError, match="36 rows = 9 anchors per location"):
        convert_yolact.infer_settings(fake_state_dict(num_anchors=9))
    state = fake_state_dict()
    state["prediction_layers.0.conf_layer.weight"] = np.zeros((242, 0, 3, 3))
    with pytest.raises(ValueError, match="conf_layer.weight has 242 rows, not a multiple of 3"):
        convert_yolact.infer_settings(state)
    key = "prediction_layers.0.mask_layer.weight"
    with pytest.raises(KeyError, match=re.escape(f"missing key in state_dict: '{key}'")):
        convert_yolact.infer_settings({k: v for k, v in fake_state_dict().items() if k != key})
    with pytest.raises(ValueError, match="unknown YOLACT architecture 'yolact_plus_base'"):
        convert_yolact.infer_settings(fake_state_dict(), "yolact_plus_base")


def test_reference_dropped_keys():
    """The keys the reference's ``Yolact.load_weights`` deletes, and only those."""
    dropped = ["backbone.layer1.0.conv1.weight", "backbone.layer4.2.bn3.running_var",
               "fpn.downsample_layers.2.weight", "fpn.downsample_layers.3.bias"]
    kept = ["backbone.layers.0.0.conv1.weight", "fpn.downsample_layers.0.weight",
            "fpn.downsample_layers.1.bias", "backbone.conv1.weight", "fpn.lat_layers.2.bias"]
    assert [convert_yolact.reference_dropped(k) for k in dropped] == [True] * len(dropped)
    assert [convert_yolact.reference_dropped(k) for k in kept] == [False] * len(kept)


# ------------------------------------------------------------------ the contract's parts
def contract_parts(num_classes=NUM_CLASSES, num_prototypes=NUM_PROTOTYPES):
    """The attributes YOLACT_CONTRACT fixes, built from the shared layers: what the converter
    reads (the model's own wiring is not needed to check the key table and the errors)."""
    from keras_maskrcnn.layers.dense_head import DenseHead
    from keras_maskrcnn.layers.fpn import FPN
    from keras_maskrcnn.models.backbones import ResNet

    backbone = ResNet(50, freeze_at=0)
    backbone.build((None, None, None, 3))
    fpn = FPN(256, input_levels=("C3", "C4", "C5"), max_level=7, extra_levels="conv",
              top_down="bilinear", output_relu=True)
    fpn.build({k: (None, None, None, c) for k, c in backbone.out_channels.items()})
    convs = [keras.layers.Conv2D(256, 3, padding="same", name=f"conv_{i}") for i in range(4)]
    convs.append(keras.layers.Conv2D(num_prototypes, 1, name="conv_4"))
    for conv in convs:
        conv.build((None, None, None, 256))
    head = DenseHead(3, {"box_deltas": 4, "class_logits": num_classes,
                         "mask_coefficients": num_prototypes}, num_convs=1, conv_channels=256,
                     predictor_kernel_size=3, output_activations={"mask_coefficients": "tanh"})
    head.build({"P3": (None, None, None, 256)})
    semantic = keras.layers.Conv2D(num_classes - 1, 1, name="semantic_seg")
    semantic.build((None, None, None, 256))
    return types.SimpleNamespace(backbone=backbone, fpn=fpn,
                                 protonet=types.SimpleNamespace(convs=convs),
                                 prediction_head=head, semantic_head=semantic)


def model_weights(parts):
    """Every weight variable of the parts (a model or ``contract_parts``)."""
    if isinstance(parts, keras.Model):
        return list(parts.weights)
    layers = [parts.backbone, parts.fpn, *parts.protonet.convs, parts.prediction_head,
              parts.semantic_head]
    return [w for layer in layers for w in layer.weights]


def check_key_table(parts, state_dict):
    """Every checkpoint key lands in exactly one weight of the same (Keras-layout) shape, and
    every weight of ``parts`` is set by one key."""
    reader = tv.StateDictReader(state_dict)
    convert_yolact.read_yolact(reader, parts)
    assert reader.consumed == set(state_dict), sorted(set(state_dict) ^ reader.consumed)[:10]
    assert set(reader.targets) == {k for k in state_dict if "num_batches_tracked" not in k}
    for key, variable in reader.targets.items():
        value = np.asarray(state_dict[key])
        shape = (tv.torch_conv_kernel_to_keras(value).shape if value.ndim == 4 else value.shape)
        assert tuple(variable.shape) == shape, key
    targets = [id(v) for v in reader.targets.values()]
    assert len(set(targets)) == len(targets), "a weight is read from two keys"
    weights = model_weights(parts)
    assert sorted(targets) == sorted(id(w) for w in weights), \
        [w.path for w in weights if id(w) not in set(targets)]
    return reader


@pytest.fixture(scope="module")
def reference():
    """The torch reference (calibrated on the first photo), its state_dict (numpy) and its
    outputs and detections on each photo (coffee 213 x 320: the square resize is undone
    anisotropically; astronaut 320 x 320)."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from support import yolact_torch_reference as ref
    from PIL import Image

    images, inputs, outputs, detections = {}, {}, {}, {}
    for name in PHOTOS:
        path = os.path.join(os.path.dirname(keras_maskrcnn.__file__), "assets", name + ".jpg")
        with Image.open(path) as f:
            images[name] = np.asarray(f.convert("RGB"))
        inputs[name] = ref.preprocess(images[name], SIZE)  # (1, 3, S, S)
    model = ref.randomised(50, NUM_CLASSES, NUM_PROTOTYPES, inputs[PHOTOS[0]])
    for name in PHOTOS:
        raw = model(inputs[name])
        detections[name] = ref.detect(raw, images[name].shape[:2])
        outputs[name] = {k: v.numpy() for k, v in raw.items()}
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return {"model": model, "images": images, "inputs": {k: v.numpy() for k, v in inputs.items()},
            "outputs": outputs, "detections": detections, "state_dict": state}


def test_key_table_on_the_contract_parts(reference):
    parts = contract_parts()
    reader = check_key_table(parts, reference["state_dict"])
    assert len(reader.targets) == len(model_weights(parts)) == 301
    # ResNet-50 53 convs + 53 BNs x 4 = 265, FPN 16, protonet 10, head 8, semantic 2


def test_errors_name_the_key_and_assign_nothing(reference):
    state = reference["state_dict"]
    parts = contract_parts()
    before = [w.numpy() for w in model_weights(parts)]
    key = "backbone.layers.2.5.conv2.weight"
    with pytest.raises(KeyError, match=re.escape(f"missing key in state_dict: '{key}'")):
        convert_yolact.load_yolact_weights(parts, {k: v for k, v in state.items() if k != key})
    key = "proto_net.8.bias"
    with pytest.raises(ValueError, match=re.escape(f"shape mismatch for '{key}': expected "
                                                   "(256,)")):
        convert_yolact.load_yolact_weights(parts, {**state, key: state[key][:7]})
    key = "prediction_layers.0.conf_layer.weight"
    with pytest.raises(ValueError, match=re.escape(f"shape mismatch for '{key}'")):
        convert_yolact.load_yolact_weights(parts, {**state, key: state[key][:, :, :1, :1]})
    for extra in ("prediction_layers.1.bbox_layer.weight", "maskiou_net.0.weight",
                  "fpn.lat_layers.3.weight"):
        with pytest.raises(ValueError, match=re.escape(f"not used by the model: ['{extra}']")):
            convert_yolact.load_yolact_weights(parts, {**state, extra: np.zeros(3)})
    for got, expected in zip(model_weights(parts), before):
        np.testing.assert_array_equal(got.numpy(), expected)


def test_loads_with_the_keys_the_reference_drops(reference):
    state = dict(reference["state_dict"])
    state["fpn.downsample_layers.2.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    state["fpn.downsample_layers.2.bias"] = np.zeros((256,), np.float32)
    state["backbone.layer1.0.conv1.weight"] = np.zeros((1,), np.float32)
    parts = contract_parts()
    consumed = convert_yolact.load_yolact_weights(parts, state)
    assert not any(convert_yolact.reference_dropped(k) for k in consumed)
    kernel = parts.fpn.lateral_convs[0].kernel.numpy()  # C3's lateral = lat_layers.2
    np.testing.assert_array_equal(
        kernel, tv.torch_conv_kernel_to_keras(state["fpn.lat_layers.2.weight"]))
    np.testing.assert_array_equal(parts.prediction_head.predictors["class_logits"].bias.numpy(),
                                  state["prediction_layers.0.conf_layer.bias"])


# ------------------------------------------------------------------ the converted model
OVERRIDES = (f"input.size={SIZE}",)
OUTPUT_RTOL = 1e-4
MIN_DETECTIONS = 50


@pytest.fixture(scope="module")
def converted(reference):
    return convert_yolact.from_yolact(reference["state_dict"], overrides=OVERRIDES)


def test_converted_model_matches_the_key_table(reference, converted):
    from keras_maskrcnn.models.yolact import YOLACT

    assert isinstance(converted, YOLACT)
    reader = check_key_table(converted, reference["state_dict"])
    for key, variable in reader.targets.items():
        value = reference["state_dict"][key]
        value = tv.torch_conv_kernel_to_keras(value) if value.ndim == 4 else value
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=key)
    cfg = converted.config_dict
    assert cfg["model"]["backbone"]["name"] == "resnet50"
    assert (cfg["model"]["num_classes"], cfg["model"]["yolact"]["num_prototypes"]) == (5, 32)
    assert cfg["model"]["category_ids"] is None  # not COCO's 81 classes: contiguous labels


@pytest.mark.parametrize("photo", PHOTOS)
def test_raw_outputs_match_the_reference(reference, converted, photo):
    """Input resize + normalisation, anchors, box deltas, class scores, coefficients and
    prototypes."""
    import tensorflow as tf

    outputs = reference["outputs"][photo]
    images, image_sizes = converted.preprocessor(tf.constant(reference["images"][photo][None]))
    normalised = converted.preprocessor.normalize(images, image_sizes).numpy()
    assert normalised.shape == (1, SIZE, SIZE, 3)
    assert np.abs(normalised - reference["inputs"][photo].transpose(0, 2, 3, 1)).max() <= 1e-4
    features = converted.fpn(converted.backbone(normalised))
    assert [features[f"P{i}"].shape[1] for i in range(3, 8)] == [19, 10, 5, 3, 2]
    predictions = converted.prediction_head(features)
    errors = {
        "prototypes": relative_error(converted.protonet(features["P3"]), outputs["proto"]),
        "box_deltas": relative_error(predictions["box_deltas"], outputs["loc"]),
        "class_scores": relative_error(tf.nn.softmax(predictions["class_logits"]),
                                       outputs["conf"]),
        "class_logits": relative_error(predictions["class_logits"], outputs["conf_logits"]),
        "coefficients": relative_error(predictions["mask_coefficients"], outputs["coef"]),
    }
    print(errors)
    assert max(errors.values()) <= OUTPUT_RTOL, errors
    cx, cy, w, h = outputs["priors"].T.astype(np.float64) * SIZE  # relative -> input pixels
    priors = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    np.testing.assert_allclose(converted.anchors(images, features).numpy(), priors, rtol=0,
                               atol=1e-4)


@pytest.mark.parametrize("photo", PHOTOS)
def test_detect_matches_the_reference(reference, converted, photo):
    """``detect`` (original pixels) against the reference's Detect + postprocess: boxes
    clamped to the image and truncated to integers as the reference's ``boxes.long()``."""
    theirs = reference["detections"][photo]
    ours = converted.detect([reference["images"][photo]])[0]
    assert ours["masks"].shape[1:] == reference["images"][photo].shape[:2]
    assert len(theirs["scores"]) >= MIN_DETECTIONS
    assert len(np.unique(theirs["labels"])) == NUM_CLASSES - 1
    pairs = match_detections(theirs, ours)
    matched = [(i, j) for i, j, iou, diff in pairs if iou >= DETECTION_IOU and diff <= SCORE_TOL]
    fraction = len(matched) / len(pairs)
    ious = [mask_iou(theirs["masks"][i], ours["masks"][j]) for i, j in matched]
    i, j = (np.array(t) for t in zip(*matched))
    # Truncation is discontinuous at integers: a float coordinate within float noise of one
    # may truncate differently on the two sides.
    at_integer = np.abs(theirs["boxes_float"][i] - np.round(theirs["boxes_float"][i])) < 1e-3
    same_int = (ours["boxes"][j] == theirs["boxes"][i]) | at_integer
    print({"detections": (len(theirs["scores"]), len(ours["scores"])), "matched": fraction,
           "worst_mask_iou": min(ious), "int_boxes_equal": float(same_int.mean())})
    assert len(ours["scores"]) == len(theirs["scores"])
    assert fraction >= DETECTION_FRACTION
    assert min(ious) >= MASK_IOU
    assert same_int.all()


def test_arch_override_names_the_missing_key(reference):
    with pytest.raises(KeyError, match=re.escape(
            "missing key in state_dict: 'backbone.layers.2.6.conv1.weight'")):
        convert_yolact.from_yolact(reference["state_dict"], arch="yolact_base",
                                   overrides=("input.size=64",))


def test_coco_checkpoints_label_with_coco_category_ids():
    """81 classes: the reference's COCO_LABEL_MAP order, i.e. the 80 COCO ids ascending."""
    ids = convert_yolact.COCO_CATEGORY_IDS
    assert len(ids) == len(set(ids)) == 80 and list(ids) == sorted(ids)
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    cfg = convert_yolact.yolact_config(convert_yolact.infer_settings(fake_state_dict()))
    assert cfg.model.category_ids == ids
    from keras_maskrcnn import builders
    assert builders.build_model(cfg, build=False).category_ids == list(ids)  # detect's labels
    assert (cfg.input.resize, cfg.input.size, cfg.input.size_divisor) == ("fixed_square", 550, 1)
    np.testing.assert_allclose(np.array(cfg.input.pixel_mean) * 255, (123.68, 116.78, 103.94))
    np.testing.assert_allclose(np.array(cfg.input.pixel_std) * 255, (58.40, 57.12, 57.38))
    y = cfg.model.yolact
    assert (y.score_threshold, y.nms_threshold, y.top_k, y.detections_per_image, y.fast_nms,
            y.square_anchors, y.mask_threshold) == (0.05, 0.5, 200, 100, True, True, 0.5)
    assert y.anchor_scales == (24, 48, 96, 192, 384) and y.aspect_ratios == (1, 0.5, 2)


_CHILD = r"""
import sys
sys.modules["torch"] = None  # from here on, importing torch fails
from keras_maskrcnn.convert.__main__ import main
main(sys.argv[1:])
assert sys.modules["torch"] is None
"""


def test_cli_converts_without_torch(reference, converted, tmp_path):
    """``python -m keras_maskrcnn.convert yolact`` on a ``torch.save``d state_dict, in a child
    process where importing torch fails; its files rebuild the converted model exactly."""
    import subprocess
    import sys

    import torch

    from keras_maskrcnn import build_model, load_config
    checkpoint = tmp_path / "yolact_random.pth"
    torch.save(reference["model"].state_dict(), checkpoint)
    output = tmp_path / "converted"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(keras_maskrcnn.__file__)),
         os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", _CHILD, "yolact", "--checkpoint",
                          str(checkpoint), "--output", str(output), "--set", OVERRIDES[0]],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "assigning weights" in run.stderr and "wrote" in run.stdout
    loaded = build_model(load_config(str(output / "config.yaml")))
    loaded.load_weights(str(output / "model.weights.h5"))
    assert loaded.config_dict == converted.config_dict
    assert len(loaded.weights) == len(converted.weights)
    for got, expected in zip(loaded.weights, converted.weights):
        np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=expected.path)
    bad = tmp_path / "bad.pth"
    state = reference["model"].state_dict()
    torch.save({k: v for k, v in state.items() if k != "proto_net.4.bias"}, bad)
    run = subprocess.run([sys.executable, "-c", _CHILD, "yolact", "--checkpoint", str(bad),
                          "--output", str(tmp_path / "bad")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode != 0
    assert "missing key in state_dict: 'proto_net.4.bias'" in run.stderr
    assert not (tmp_path / "bad" / "model.weights.h5").exists()
