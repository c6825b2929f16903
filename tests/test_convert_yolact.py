"""``convert/yolact.py``: reference YOLACT checkpoints -> our ``YOLACT``.

The reference is tests/yolact_torch_reference.py: the reference's module tree (so its
state_dict has the checkpoint's keys) with seeded random weights whose activations stay O(1),
ResNet-50, K = 5 classes, k = 32 prototypes, at a 150 x 150 input (C3..C5 = 19, 10, 5: the
10 -> 19 top-down is not a doubling) instead of 550 to keep CPU time sane; the code paths are
the same at any size. The torch side saves it with ``torch.save(state_dict)``; the converter
reads that file without torch (a child process in which importing torch fails).

Bars: every checkpoint key is read into exactly one weight and every weight is set, with the
key table's shapes; raw outputs (box deltas, class scores, coefficients, prototypes) within
1e-4 relative error; detections as tests/test_parity.py: >= 95% of the reference's matched
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

NUM_CLASSES, NUM_PROTOTYPES, SIZE = 5, 32, 150
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
    assert settings == {"depth": depth, "num_anchors": 3, "num_classes": 81,
                        "num_prototypes": 32}
    small = convert_yolact.infer_settings(fake_state_dict(depth, num_classes=21,
                                                          num_prototypes=16))
    assert (small["num_classes"], small["num_prototypes"]) == (21, 16)
    other = "yolact_base" if depth == "resnet50" else "yolact_resnet50"
    assert convert_yolact.infer_settings(fake_state_dict(depth), other)["depth"] == \
        convert_yolact.ARCHITECTURES[other]


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
    with pytest.raises(ValueError, match="unknown YOLACT architecture 'yolact_im700'"):
        convert_yolact.infer_settings(fake_state_dict(), "yolact_im700")


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
    """The torch reference, its state_dict (numpy) and its outputs on a photo."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    import yolact_torch_reference as ref
    from PIL import Image

    path = os.path.join(os.path.dirname(keras_maskrcnn.__file__), "assets", "astronaut.jpg")
    with Image.open(path) as f:
        image = np.asarray(f.convert("RGB"))
    x = ref.preprocess(image, SIZE)
    model = ref.randomised(50, NUM_CLASSES, NUM_PROTOTYPES, x)
    outputs = model(x)
    detections = ref.detect(outputs, image.shape[:2])
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return {"model": model, "image": image, "input": x.numpy(), "outputs":
            {k: v.numpy() for k, v in outputs.items()}, "detections": detections,
            "state_dict": state}


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
