"""DenseHead: the conv tower + named per-anchor outputs shared over pyramid levels.

Oracle: a torch reference of YOLACT's ``PredictionModule`` (``upfeature`` 3x3 conv + ReLU,
sibling 3x3 convs, ``permute(0, 2, 3, 1).view(B, -1, D)``, tanh on the mask coefficients,
levels concatenated P3..P7) with random weights copied in through the converter's ``read_conv``.
The RPN configuration (``RPNHead``) is checked against torchvision in tests/layers/test_rpn.py.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.convert import torchvision as tvconvert
from keras_maskrcnn.layers.dense_head import DenseHead
from keras_maskrcnn.ops.anchors import feature_keys, level_sizes
from support.layers import assert_config_round_trip

CHANNELS = 8
A = 3
OUTPUTS = {"box_deltas": 4, "class_logits": 5, "mask_coefficients": 6}
SIZES = {"P3": (9, 7), "P4": (5, 4), "P5": (3, 2)}


def _features(sizes=SIZES, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(batch, h, w, CHANNELS)).astype(np.float32)
            for k, (h, w) in sizes.items()}


def _yolact_head(**kwargs):
    return DenseHead(A, OUTPUTS, num_convs=1, predictor_kernel_size=3,
                     output_activations={"mask_coefficients": "tanh"}, **kwargs)


def _torch_reference(torch, num_convs=1, seed=0):
    nn = torch.nn

    class PredictionModule(nn.Module):
        def __init__(self):
            super().__init__()
            layers = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU()]
            self.upfeature = nn.Sequential(*layers)
            self.preds = nn.ModuleDict({name: nn.Conv2d(CHANNELS, A * d, 3, padding=1)
                                        for name, d in OUTPUTS.items()})

        def forward(self, x):
            x = self.upfeature(x)
            return {name: conv(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, OUTPUTS[name])
                    for name, conv in self.preds.items()}

    torch.manual_seed(seed)
    model = PredictionModule().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def _copy(tmodel, head):
    reader = tvconvert.StateDictReader(tmodel.state_dict())
    for i, conv in enumerate(head.convs):
        tvconvert.read_conv(reader, conv, f"upfeature.{2 * i}.")
    for name, conv in head.predictors.items():
        tvconvert.read_conv(reader, conv, f"preds.{name}.")
    reader.check_no_leftover("")
    reader.commit()


def _nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# ------------------------------------------------------------------------------ values and order
def test_matches_torch_reference_in_anchor_order(torch):
    tmodel = _torch_reference(torch)
    head = _yolact_head()
    head.build({"P3": (None, None, None, CHANNELS)})
    _copy(tmodel, head)
    feats = _features()
    shuffled = {k: feats[k] for k in ("P5", "P3", "P4")}  # dict order is ignored
    ours = head(shuffled)
    with torch.no_grad():
        per_level = [tmodel(_nchw(torch, feats[k])) for k in ("P3", "P4", "P5")]
        theirs = {n: torch.cat([p[n] for p in per_level], 1).numpy() for n in OUTPUTS}
    theirs["mask_coefficients"] = np.tanh(theirs["mask_coefficients"])
    total = sum(h * w * A for h, w in SIZES.values())
    for name, d in OUTPUTS.items():
        assert ours[name].dtype == tf.float32 and ours[name].shape == (2, total, d)
        np.testing.assert_allclose(ours[name].numpy(), theirs[name], atol=1e-5, err_msg=name)
    # index (level offset) + (y * W + x) * A + a reads conv channel a * D + d at (y, x)
    with torch.no_grad():
        up = tmodel.upfeature(_nchw(torch, feats["P4"]))
        raw = tmodel.preds["class_logits"](up).numpy()  # (B, A * D, H, W)
    offset, (y, x, a, w) = SIZES["P3"][0] * SIZES["P3"][1] * A, (2, 1, 2, SIZES["P4"][1])
    index = offset + (y * w + x) * A + a
    np.testing.assert_allclose(ours["class_logits"].numpy()[:, index],
                               raw[:, a * 5:(a + 1) * 5, y, x], atol=1e-5)


def test_levels_in_natural_order_and_shared_weights():
    head = _yolact_head()
    feats = _features({"P9": (4, 3), "P10": (2, 2)})
    both = head(feats)
    assert feature_keys(feats) == ["P9", "P10"]
    n9, n10 = level_sizes(feats, A)
    assert (n9, n10) == (36, 12)
    # one set of weights: each level alone gives its slice of the concatenation
    assert len(head.weights) == 2 * (1 + len(OUTPUTS))
    alone = {k: head({k: v}) for k, v in feats.items()}
    assert len(head.weights) == 2 * (1 + len(OUTPUTS))
    for name in OUTPUTS:
        np.testing.assert_array_equal(both[name].numpy()[:, :n9], alone["P9"][name].numpy())
        np.testing.assert_array_equal(both[name].numpy()[:, n9:], alone["P10"][name].numpy())


def test_squeeze_activation_tower_width_and_initializers():
    feats = _features({"P2": (6, 5), "P3": (3, 3)})
    plain = DenseHead(A, {"objectness": 1, "box_deltas": 4}, num_convs=2, conv_channels=6,
                      squeeze_outputs=("objectness",), kernel_initializer="random_normal")
    out = plain(feats)
    n = 6 * 5 * A + 3 * 3 * A
    assert out["objectness"].shape == (2, n) and out["box_deltas"].shape == (2, n, 4)
    assert [c.filters for c in plain.convs] == [6, 6]
    assert plain.predictors["box_deltas"].kernel.shape == (1, 1, 6, 4 * A)
    # each conv has its own initializer instance (one instance repeats its values per shape)
    twin = DenseHead(A, {"x": 1}, num_convs=2, kernel_initializer="random_normal")
    twin.build({"P2": (None, None, None, CHANNELS)})
    assert not np.array_equal(twin.convs[0].kernel.numpy(), twin.convs[1].kernel.numpy())
    tanh = DenseHead(A, {"objectness": 1, "box_deltas": 4}, num_convs=2, conv_channels=6,
                     squeeze_outputs=("objectness",), output_activations={"box_deltas": "tanh"})
    tanh.build({"P2": (None, None, None, CHANNELS)})
    tanh.set_weights(plain.get_weights())
    got = tanh(feats)
    np.testing.assert_array_equal(got["objectness"].numpy(), out["objectness"].numpy())
    np.testing.assert_allclose(got["box_deltas"].numpy(), np.tanh(out["box_deltas"].numpy()),
                               rtol=1e-6, atol=1e-7)
    no_tower = DenseHead(A, {"x": 2}, num_convs=0)
    assert no_tower(feats)["x"].shape == (2, n, 2) and len(no_tower.weights) == 2


# ------------------------------------------------------------------------------ Keras harness
def test_config_round_trip_and_save_load(tmp_path):
    head = _yolact_head(kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                        name="head")
    assert_config_round_trip(head)
    inputs = {k: keras.Input((None, None, CHANNELS), name=k) for k in SIZES}
    model = keras.Model(inputs, _yolact_head(name="head")(inputs))
    feats = _features()
    before = {k: v.numpy() for k, v in model(feats).items()}
    model.save(str(tmp_path / "head.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "head.keras"))
    for k, v in loaded(feats).items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    model.save_weights(str(tmp_path / "head.weights.h5"))
    fresh = keras.Model(inputs, _yolact_head(name="head")(inputs))
    fresh.load_weights(str(tmp_path / "head.weights.h5"))
    np.testing.assert_array_equal(fresh(feats)["class_logits"].numpy(), before["class_logits"])


def test_symbolic_shapes_and_mixed_precision():
    static = {k: keras.Input((h, w, CHANNELS), name=k) for k, (h, w) in SIZES.items()}
    out = _yolact_head()(static)
    total = sum(h * w * A for h, w in SIZES.values())
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (None, total, d) for k, d in OUTPUTS.items()}
    dynamic = {k: keras.Input((None, None, CHANNELS), name=k) for k in SIZES}
    assert _yolact_head()(dynamic)["box_deltas"].shape == (None, None, 4)
    head = _yolact_head(dtype="mixed_bfloat16")
    out = head(_features())
    assert head.convs[0].compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in out.values())


@pytest.mark.parametrize("kwargs,match", [
    ({"output_channels": {}}, "output_channels"),
    ({"output_channels": {"x": 0}}, "output_channels"),
    ({"output_activations": {"y": "tanh"}}, "unknown output"),
    ({"output_activations": {"x": "no_such_activation"}}, "no_such_activation"),
    ({"squeeze_outputs": ("x",)}, "1 channel"),
    ({"num_anchors": 0}, "num_anchors"),
])
def test_argument_errors(kwargs, match):
    args = dict({"num_anchors": 3, "output_channels": {"x": 2}}, **kwargs)
    with pytest.raises(ValueError, match=match):
        DenseHead(**args)
    with pytest.raises(ValueError, match="same known channel count"):
        DenseHead(3, {"x": 2}).build({"P2": (None, None, None, 4), "P3": (None, None, None, 8)})
