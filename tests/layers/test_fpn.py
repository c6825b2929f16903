"""FPN configurations beyond torchvision's (the defaults are checked in
tests/models/test_backbones.py).

Oracle: a torch reference of YOLACT's FPN (yolact.py ``FPN.forward``: 1x1 laterals, top-down
``F.interpolate(size=..., mode="bilinear", align_corners=False)``, 3x3 output convs + ReLU,
P6/P7 = ``Conv2d(3, stride=2, padding=1)`` on the previous output, no ReLU) with random weights
copied into ours through the converter's ``read_conv``.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.convert import torchvision as tvconvert
from keras_maskrcnn.layers.fpn import FPN, upsample_bilinear_like
from keras_maskrcnn.models.backbones import ResNet
from support.layers import assert_config_round_trip

YOLACT = dict(input_levels=("C3", "C4", "C5"), max_level=7, extra_levels="conv",
              top_down="bilinear", output_relu=True)
IN_CHANNELS = (8, 12, 16)


def _rel_err(ours, theirs):
    return np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))


def _nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_yolact_fpn(torch, channels, num_extra=2, seed=0):
    nn, F = torch.nn, torch.nn.functional

    class ReferenceFPN(nn.Module):
        def __init__(self):
            super().__init__()
            self.lat = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in IN_CHANNELS])
            self.pred = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1)
                                       for _ in IN_CHANNELS])
            self.down = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1, stride=2)
                                       for _ in range(num_extra)])

        def forward(self, convouts):
            out, x = [None] * len(convouts), None
            for j in reversed(range(len(convouts))):
                lateral = self.lat[j](convouts[j])
                if x is not None:
                    x = F.interpolate(x, size=lateral.shape[-2:], mode="bilinear",
                                      align_corners=False)
                x = lateral if x is None else x + lateral
                out[j] = x
            out = [F.relu(pred(o)) for pred, o in zip(self.pred, out)]
            for down in self.down:
                out.append(down(out[-1]))
            return out

    torch.manual_seed(seed)
    model = ReferenceFPN().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(0.0, 0.2)
    return model


def _copy_weights(tmodel, fpn):
    reader = tvconvert.StateDictReader(tmodel.state_dict())
    for group, convs in (("lat", fpn.lateral_convs), ("pred", fpn.output_convs),
                         ("down", fpn.extra_convs)):
        for i, conv in enumerate(convs):
            tvconvert.read_conv(reader, conv, f"{group}.{i}.")
    reader.check_no_leftover("")
    reader.commit()


def _features(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return {f"C{3 + i}": rng.normal(size=(2, h, w, c)).astype(np.float32)
            for i, ((h, w), c) in enumerate(zip(sizes, IN_CHANNELS))}


def _yolact_pair(torch, channels=16):
    tmodel = _torch_yolact_fpn(torch, channels)
    fpn = FPN(channels, **YOLACT)
    fpn.build({f"C{3 + i}": (None, None, None, c) for i, c in enumerate(IN_CHANNELS)})
    _copy_weights(tmodel, fpn)
    return tmodel, fpn


# ------------------------------------------------------------------------------ bilinear resize
def test_upsample_bilinear_equals_torch_on_odd_sizes(torch):
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((35, 35), (69, 69)), ((18, 35), (35, 69)), ((7, 5), (13, 9)),
                             ((2, 3), (9, 4)), ((1, 1), (3, 2)), ((5, 5), (5, 5))]:
        x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
        theirs = torch.nn.functional.interpolate(_nchw(torch, x), size=(oh, ow), mode="bilinear",
                                                 align_corners=False)
        ours = upsample_bilinear_like(x, np.zeros((2, oh, ow, 1), np.float32)).numpy()
        # Same samples; the weights differ by float32 rounding of the source coordinate
        # (ulp(16) = 2e-6 times a neighbour difference of a few units at 35 -> 69).
        np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), rtol=1e-5,
                                   atol=1e-5)
    # align_corners=True (and x2 nearest) pick other samples on 35 -> 69: the reason to pin it.
    x = rng.normal(size=(1, 35, 35, 1)).astype(np.float32)
    corners = tf.compat.v1.image.resize_bilinear(x, (69, 69), align_corners=True).numpy()
    ours = upsample_bilinear_like(x, np.zeros((1, 69, 69, 1), np.float32)).numpy()
    assert np.max(np.abs(corners - ours)) > 1e-2


# ------------------------------------------------------------------------------ YOLACT FPN
@pytest.mark.parametrize("sizes", [((69, 69), (35, 35), (18, 18)),
                                   ((69, 45), (35, 23), (18, 12))])
def test_yolact_fpn_matches_torch_reference(torch, sizes):
    tmodel, fpn = _yolact_pair(torch)
    feats = _features(sizes)
    with torch.no_grad():
        theirs = tmodel([_nchw(torch, feats[k]) for k in ("C3", "C4", "C5")])
    theirs = [t.numpy().transpose(0, 2, 3, 1) for t in theirs]
    ours = fpn(feats)
    assert list(ours) == ["P3", "P4", "P5", "P6", "P7"]
    for level, t in zip(ours, theirs):
        assert ours[level].shape == t.shape, level
        err = _rel_err(ours[level].numpy(), t)
        assert err <= 1e-5, f"{sizes} {level}: rel err {err:.2e}"
    assert ours["P6"].shape[1:3] == (-(-sizes[2][0] // 2), -(-sizes[2][1] // 2))
    # mutation: Keras' "same" stride-2 conv pads bottom/right only on even sizes (18 -> 9)
    conv = fpn.extra_convs[0]
    same = tf.nn.conv2d(ours["P5"], conv.kernel, 2, "SAME") + conv.bias
    assert same.shape == ours["P6"].shape and _rel_err(same.numpy(), theirs[3]) > 1e-2


def test_top_down_and_relu_options_change_what_they_say(torch):
    _, fpn = _yolact_pair(torch)
    feats = _features(((69, 69), (35, 35), (18, 18)))
    ours = {k: v.numpy() for k, v in fpn(feats).items()}
    variants = {}
    for name, change in (("nearest", {"top_down": "nearest"}), ("no_relu", {"output_relu": False})):
        layer = FPN(16, **dict(YOLACT, **change))
        layer.build({k: v.shape for k, v in feats.items()})
        layer.set_weights(fpn.get_weights())
        variants[name] = {k: v.numpy() for k, v in layer(feats).items()}
    # nearest top-down: P5 (no upsampling above it) equal, P3 and P4 differ
    np.testing.assert_array_equal(variants["nearest"]["P5"], ours["P5"])
    assert _rel_err(variants["nearest"]["P3"], ours["P3"]) > 1e-2
    # ReLU on P3..P5 only: outputs are the ReLU of the plain ones; P6, P7 keep negatives
    for level in ("P3", "P4", "P5"):
        np.testing.assert_array_equal(ours[level], np.maximum(variants["no_relu"][level], 0))
        assert ours[level].min() == 0.0 and variants["no_relu"][level].min() < 0
    assert ours["P6"].min() < 0 and ours["P7"].min() < 0


def test_yolact_level_sizes_at_550():
    """At 550x550 a ResNet gives C3..C5 = 69, 35, 18 and the YOLACT FPN P3..P7 = 69..5."""
    resnet = ResNet(18, width_multiplier=0.25, name="resnet")
    fpn = FPN(16, **YOLACT, name="fpn")
    c = resnet(np.zeros((1, 550, 550, 3), np.float32))
    features = fpn(c)
    assert [c[k].shape[1] for k in ("C3", "C4", "C5")] == [69, 35, 18]
    assert {k: tuple(v.shape[1:3]) for k, v in features.items()} == {
        "P3": (69, 69), "P4": (35, 35), "P5": (18, 18), "P6": (9, 9), "P7": (5, 5)}
    symbolic = fpn(resnet(keras.Input((550, 550, 3))))
    assert {k: v.shape[1] for k, v in symbolic.items()} == {
        "P3": 69, "P4": 35, "P5": 18, "P6": 9, "P7": 5}
    shapes = fpn.compute_output_shape({k: (None, None, None, 8) for k in ("C3", "C4", "C5")})
    assert shapes["P7"] == (None, None, None, 16)


def test_max_pool_extra_levels_and_c3_inputs():
    feats = _features(((13, 10), (7, 5), (4, 3)))
    fpn = FPN(8, input_levels=("C3", "C4", "C5"), max_level=7)
    out = fpn(feats)
    assert fpn.output_levels == ("P3", "P4", "P5", "P6", "P7") and fpn.extra_convs == []
    np.testing.assert_array_equal(out["P6"].numpy(), out["P5"].numpy()[:, ::2, ::2])
    np.testing.assert_array_equal(out["P7"].numpy(), out["P6"].numpy()[:, ::2, ::2])
    assert list(FPN(8, max_level=5)(dict(feats, C2=np.zeros((2, 26, 20, 4), np.float32)))) == [
        "P2", "P3", "P4", "P5"]


def test_default_sub_layer_and_weight_names():
    """The defaults keep torchvision's layout: the converter and saved weights rely on them."""
    fpn = FPN(8, name="fpn")
    fpn.build({f"C{i}": (None, None, None, 4) for i in range(2, 6)})
    layers = [f"lateral_C{i}" for i in range(2, 6)] + [f"output_P{i}" for i in range(2, 6)]
    assert [v.path for v in fpn.weights] == [f"fpn/{layer}/{w}" for layer in layers
                                             for w in ("kernel", "bias")]
    assert fpn.extra_convs == [] and fpn.output_levels == ("P2", "P3", "P4", "P5", "P6")


# ------------------------------------------------------------------------------ Keras harness
def test_config_round_trip_save_load_and_errors(tmp_path, torch):
    _, fpn = _yolact_pair(torch, channels=8)
    assert_config_round_trip(fpn)
    inputs = {f"C{3 + i}": keras.Input((None, None, c), name=f"C{3 + i}")
              for i, c in enumerate(IN_CHANNELS)}
    model = keras.Model(inputs, FPN(8, **YOLACT, name="fpn")(inputs))
    model.get_layer("fpn").set_weights(fpn.get_weights())
    feats = _features(((9, 7), (5, 4), (3, 2)))
    before = {k: v.numpy() for k, v in model(feats).items()}
    model.save(str(tmp_path / "fpn.keras"))
    after = keras.saving.load_model(str(tmp_path / "fpn.keras"))(feats)
    for k in before:
        np.testing.assert_array_equal(after[k].numpy(), before[k])
    for kwargs, match in [({"top_down": "bicubic"}, "top_down"),
                          ({"extra_levels": "avg_pool"}, "extra_levels"),
                          ({"input_levels": ("C3", "C5")}, "consecutive"),
                          ({"input_levels": ("P3",)}, "C<int>"),
                          ({"max_level": 4}, "max_level")]:
        with pytest.raises(ValueError, match=match):
            FPN(8, **kwargs)
    with pytest.raises(ValueError, match="no 'conv' extra levels"):
        tvconvert.read_fpn(tvconvert.StateDictReader({}), fpn, "fpn.")
