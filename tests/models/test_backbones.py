"""ResNet-FPN backbone, FrozenBatchNorm and the torchvision weight converter.

Oracle: torchvision's resnet_fpn_backbone (random weights with RANDOMISED FrozenBatchNorm buffers
so BN is not the identity), run on real photos normalised as torchvision does.
"""
import numpy as np
import pytest
import tensorflow as tf
import keras

from keras_maskrcnn.convert import state_dict as state_dict_lib
from keras_maskrcnn.convert import torchvision as tvconvert
from keras_maskrcnn.layers import fpn as fpn_module
from keras_maskrcnn.layers.fpn import FPN, upsample_nearest_like
from keras_maskrcnn.layers.frozen_batch_norm import FrozenBatchNorm
from keras_maskrcnn.models import backbones
from keras_maskrcnn.models.backbones import ResNet, ResNetBlock
from support.layers import assert_config_round_trip
from support.photos import photo, relative_error

TORCH_NAMES = {"C2": "0", "C3": "1", "C4": "2", "C5": "3",
               "P2": "0", "P3": "1", "P4": "2", "P5": "3", "P6": "pool"}
_CACHE = {}


def _torch_backbone(torch, torchvision, arch, trainable_layers=3, seed=0):
    """torchvision resnet_fpn_backbone with random weights, random FrozenBN buffers, FPN biases."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d
    torch.manual_seed(seed)
    model = resnet_fpn_backbone(backbone_name=arch, weights=None, trainable_layers=trainable_layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.2)
    return model.eval()


def _ours(arch, width=1.0, freeze_at=2, channels=256):
    resnet = ResNet(int(arch.replace("resnet", "")), width_multiplier=width, freeze_at=freeze_at)
    return resnet, FPN(channels)


def _converted(torch, torchvision, arch):
    """(torch model, our resnet, our fpn) with converted weights, cached per arch."""
    if arch not in _CACHE:
        tmodel = _torch_backbone(torch, torchvision, arch)
        resnet, fpn = _ours(arch)
        consumed = tvconvert.load_resnet_fpn_weights(resnet, fpn, tmodel.state_dict(), prefix="")
        assert consumed == set(tmodel.state_dict())
        _CACHE[arch] = (tmodel, resnet, fpn)
    return _CACHE[arch]


def _torch_run(torch, tmodel, x_nhwc):
    # One torch thread: on 2 shared cores, 2 OpenMP threads next to TF's pool ran 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            c = tmodel.body(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
            p = tmodel.fpn(c)
    finally:
        torch.set_num_threads(threads)
    out = {k: c[TORCH_NAMES[k]] for k in backbones.LEVELS}
    out.update({k: p[TORCH_NAMES[k]] for k in fpn_module.OUTPUT_LEVELS})
    return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}  # NCHW -> NHWC


def _our_run(resnet, fpn, x):
    c = resnet(x)
    out = dict(c, **fpn(c))
    return {k: v.numpy() for k, v in out.items()}


# ------------------------------------------------------------------------------ FrozenBatchNorm
def test_frozen_bn_hand_computed_and_torch(torch, torchvision):
    from torchvision.ops.misc import FrozenBatchNorm2d
    bn = FrozenBatchNorm()
    bn.build((None, 2, 2, 2))
    bn.gamma.assign([2.0, 1.0])
    bn.beta.assign([1.0, 0.0])
    bn.moving_mean.assign([0.5, -1.0])
    bn.moving_variance.assign([3.0, 0.25])
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    scale = np.array([2 / np.sqrt(3 + 1e-5), 1 / np.sqrt(0.25 + 1e-5)], np.float32)
    expected = x * scale + (np.array([1.0, 0.0]) - np.array([0.5, -1.0]) * scale)
    np.testing.assert_allclose(bn(x).numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(bn(x, training=True).numpy(), bn(x, training=False).numpy())
    assert bn.trainable_weights == [] and len(bn.non_trainable_weights) == 4
    # torch oracle with random buffers
    rng = np.random.default_rng(1)
    tbn = FrozenBatchNorm2d(5)
    values = [rng.uniform(0.5, 2, 5), rng.normal(size=5), rng.normal(size=5),
              rng.uniform(0.1, 2, 5)]
    for buf, v in zip((tbn.weight, tbn.bias, tbn.running_mean, tbn.running_var), values):
        buf.copy_(torch.from_numpy(v.astype(np.float32)))
    ours = FrozenBatchNorm()
    reader = tvconvert.StateDictReader({f"bn.{k}": v for k, v in tbn.state_dict().items()})
    ours.build((None, 5))
    tvconvert.read_frozen_bn(reader, ours, "bn.")
    reader.commit()
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    theirs = tbn(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours(x).numpy(), theirs, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("arch", ["resnet50", "resnet18"])
def test_resnet_fpn_matches_torchvision(torch, torchvision, arch):
    tmodel, resnet, fpn = _converted(torch, torchvision, arch)
    cases = [("astronaut", (224, 320)), ("coffee", (200, 250))]
    if arch == "resnet18":
        cases.append(("coffee", (37, 61)))  # odd sizes: C5 is 2x2, P6 1x1
    for name, hw in cases:
        x = photo(name, hw)
        theirs, ours = _torch_run(torch, tmodel, x), _our_run(resnet, fpn, x)
        for level, t in theirs.items():
            assert ours[level].shape == t.shape, (name, hw, level)
            err = relative_error(ours[level], t)
            assert err <= 1e-4, f"{arch} {name} {hw} {level}: rel err {err:.2e}"


def test_mutation_spatially_transposed_kernels_fail(torch, torchvision, monkeypatch):
    """Converting OIHW -> (kw, kh, I, O) instead of (kh, kw, I, O) must break the parity."""
    tmodel = _converted(torch, torchvision, "resnet18")[0]
    monkeypatch.setattr(state_dict_lib, "torch_conv_kernel_to_keras",  # where read_conv looks
                        lambda w: np.transpose(w, (3, 2, 1, 0)))
    resnet, fpn = _ours("resnet18")
    tvconvert.load_resnet_fpn_weights(resnet, fpn, tmodel.state_dict(), prefix="")
    x = photo("coffee", (64, 96))
    assert relative_error(_our_run(resnet, fpn, x)["C2"], _torch_run(torch, tmodel, x)["C2"]) > 1e-2


def test_mutation_asymmetric_padding_fails(torch, torchvision, monkeypatch):
    """Keras-"same"-like asymmetric padding of stride-2 convs (same sizes) must break parity."""
    _, resnet, fpn = _converted(torch, torchvision, "resnet18")
    tmodel = _CACHE["resnet18"][0]
    x = photo("coffee", (64, 96))
    monkeypatch.setattr(backbones, "_pad_hw", lambda t, p, value=0.0: tf.pad(
        t, [[0, 0], [0, 2 * p], [0, 2 * p], [0, 0]], constant_values=value))
    ours = _our_run(resnet, fpn, x)
    assert ours["C2"].shape == (1, 16, 24, 64)
    assert relative_error(ours["C2"], _torch_run(torch, tmodel, x)["C2"]) > 1e-2


# ------------------------------------------------------------------------------ nearest upsample
def test_upsample_nearest_hand_computed_and_torch(torch):
    x = np.arange(7, dtype=np.float32).reshape(1, 7, 1, 1)
    target = np.zeros((1, 13, 1, 1), np.float32)
    for method in ("resize", "gather"):
        rows = upsample_nearest_like(x, target, method).numpy().ravel()
        np.testing.assert_array_equal(rows, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6])
    # tf.image.resize NEAREST (half-pixel centres) differs here: the reason for this helper.
    half_pixel = tf.image.resize(x, (13, 1), method="nearest").numpy().ravel()
    assert not np.array_equal(half_pixel, rows)
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((3, 4), (7, 8)), ((7, 8), (13, 16)), ((5, 5), (5, 5)),
                             ((2, 3), (9, 4)), ((1, 1), (3, 2)), ((13, 16), (25, 31))]:
        x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
        target = np.zeros((2, oh, ow, 1), np.float32)
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(oh, ow), mode="nearest")
        for method in ("resize", "gather"):
            ours = upsample_nearest_like(x, target, method).numpy()
            np.testing.assert_array_equal(ours, theirs.numpy().transpose(0, 2, 3, 1))


def test_mutation_half_pixel_upsample_fails_fpn(torch, torchvision, monkeypatch):
    tmodel, _, fpn = _converted(torch, torchvision, "resnet18")
    rng = np.random.default_rng(0)
    sizes = {"C2": (25, 32, 64), "C3": (13, 16, 128), "C4": (7, 8, 256), "C5": (4, 4, 512)}
    feats = {k: rng.normal(size=(1,) + s).astype(np.float32) for k, s in sizes.items()}
    with torch.no_grad():
        theirs = tmodel.fpn({TORCH_NAMES[k]: torch.from_numpy(v.transpose(0, 3, 1, 2))
                             for k, v in feats.items()})
    theirs = {k: theirs[TORCH_NAMES[k]].numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC
              for k in fpn_module.OUTPUT_LEVELS}
    gather_fpn = FPN(256, upsample_method="gather")
    gather_fpn.build({k: v.shape for k, v in feats.items()})
    gather_fpn.set_weights(fpn.get_weights())
    for layer in (fpn, gather_fpn):
        ours = {k: v.numpy() for k, v in layer(feats).items()}
        for k in fpn_module.OUTPUT_LEVELS:
            assert relative_error(ours[k], theirs[k]) <= 1e-5, (layer.upsample_method, k)
    monkeypatch.setattr(fpn_module, "upsample_nearest_like", lambda x, t, m: tf.image.resize(
        x, tf.shape(t)[1:3], method="nearest"))
    mutated = fpn(feats)["P2"].numpy()
    assert relative_error(mutated, theirs["P2"]) > 1e-3


# ------------------------------------------------------------------------------ freezing
@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_matches_torchvision_trainable_layers(torch, torchvision, freeze_at):
    tmodel = _torch_backbone(torch, torchvision, "resnet18", trainable_layers=5 - freeze_at)
    resnet, fpn = _ours("resnet18", freeze_at=freeze_at)
    resnet.build((None, None, None, 3))
    reader = tvconvert.StateDictReader(tmodel.state_dict())
    tvconvert.read_resnet(reader, resnet, "body.")
    trainable_ids = {id(v) for v in resnet.trainable_weights}
    ours = {k for k, v in reader.targets.items() if id(v) in trainable_ids}
    theirs = {n for n, p in tmodel.named_parameters() if p.requires_grad and n.startswith("body.")}
    assert ours == theirs and len(theirs) == {0: 20, 1: 19, 2: 15, 5: 0}[freeze_at]
    fpn.build({k: (None, None, None, c) for k, c in resnet.out_channels.items()})
    assert len(fpn.trainable_weights) == 16  # 8 convs, kernel + bias


def test_trainable_weights_get_gradients_and_toggle():
    resnet, fpn = _ours("resnet18", width=0.25, freeze_at=2, channels=16)
    x = np.random.default_rng(0).normal(size=(2, 45, 70, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        out = fpn(resnet(x, training=True))
        loss = sum(tf.reduce_sum(tf.square(v)) for v in out.values())
    variables = resnet.trainable_weights + fpn.trainable_weights
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None and np.any(g.numpy() != 0), v.path
    names = {v.path for v in resnet.trainable_weights}
    assert not any("stem" in n or "res2_" in n or "bn" in n for n in names)
    assert any("res3_0" in n for n in names)
    count = len(resnet.trainable_weights)
    resnet.trainable = False
    assert resnet.trainable_weights == []
    resnet.trainable = True  # re-applies freeze_at: stem and res2 stay frozen
    assert len(resnet.trainable_weights) == count


# ------------------------------------------------------------------------------ Keras harness
def test_get_config_round_trip():
    layers = [FrozenBatchNorm(epsilon=1e-3, name="bn"), FPN(64, "gather", name="fpn"),
              ResNet(34, width_multiplier=0.5, freeze_at=3, name="r"),
              ResNetBlock(8, 2, "basic", True, name="blk")]
    for layer in layers:
        assert_config_round_trip(layer)
    with pytest.raises(ValueError, match="upsample_method"):
        FPN(256, upsample_method="bilinear")
    with pytest.raises(ValueError, match="norm"):
        ResNet(50, norm="bn")
    with pytest.raises(ValueError, match="freeze_at"):
        ResNet(50, freeze_at=6)
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    assert ResNet("resnet101").depth == 101


def _tiny_model(freeze_at=2):
    inputs = keras.Input((None, None, 3))
    c = ResNet(18, width_multiplier=0.25, freeze_at=freeze_at, name="resnet")(inputs)
    p = FPN(16, name="fpn")(c)
    return keras.Model(inputs, {**c, **p})


def test_keras_save_load_round_trip(tmp_path):
    model = _tiny_model(freeze_at=3)
    for v in model.weights:  # non-default BN buffers and biases too
        v.assign(np.random.default_rng(len(v.path)).uniform(0.5, 1.5, v.shape).astype(np.float32))
    x = photo("coffee", (70, 90))
    before = {k: v.numpy() for k, v in model(x).items()}
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = {k: v.numpy() for k, v in loaded(x).items()}
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    model.save_weights(str(tmp_path / "w.weights.h5"))
    fresh = _tiny_model(freeze_at=3)
    fresh.load_weights(str(tmp_path / "w.weights.h5"))
    np.testing.assert_array_equal(fresh(x)["P2"].numpy(), before["P2"])


@pytest.mark.parametrize("hw", [(200, 250), (33, 47)])
def test_symbolic_shapes_equal_eager(hw):
    model = _tiny_model()
    static = _tiny_model()(keras.Input(hw + (3,)))
    eager = model(np.zeros((1,) + hw + (3,), np.float32))
    for k, v in eager.items():
        assert tuple(static[k].shape[1:]) == tuple(v.shape[1:]), k
        assert tuple(model.output[k].shape) == (None, None, None, v.shape[-1])
    assert eager["C2"].shape[1:3] == (-(-hw[0] // 4), -(-hw[1] // 4))
    assert eager["P6"].shape[1:3] == (-(-hw[0] // 64), -(-hw[1] // 64))


def test_tf_function_dynamic_sizes():
    resnet, fpn = _ours("resnet18", width=0.25, channels=16)
    fn = tf.function(lambda x: fpn(resnet(x)),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    for hw in [(64, 64), (45, 77)]:  # one concrete function serves both sizes
        x = np.random.default_rng(0).normal(size=(2,) + hw + (3,)).astype(np.float32)
        eager = fpn(resnet(x))  # eager first: variables are created outside the trace
        graph = fn(x)
        # The reference is the same network traced for this static shape: graph mode fuses
        # conv + bias + ReLU (Grappler; oneDNN on Intel CPUs) and sums in another order than
        # eager's separate ops (differences up to 1.5e-5 on maps up to 4.4 were seen).
        static = tf.function(lambda x: fpn(resnet(x)))(tf.constant(x))
        for k in eager:
            assert graph[k].shape == eager[k].shape
            np.testing.assert_allclose(graph[k].numpy(), static[k].numpy(), rtol=1e-5, atol=1e-5)
    assert fn.experimental_get_tracing_count() == 1


def test_width_multiplier_resnet50():
    resnet, fpn = _ours("resnet50", width=0.25, channels=32)
    assert resnet.out_channels == {"C2": 64, "C3": 128, "C4": 256, "C5": 512}
    out = fpn(resnet(np.zeros((1, 64, 96, 3), np.float32)))
    assert resnet.stem_conv.filters == 16 and len(resnet.stages[2]) == 6
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "P2": (1, 16, 24, 32), "P3": (1, 8, 12, 32), "P4": (1, 4, 6, 32), "P5": (1, 2, 3, 32),
        "P6": (1, 1, 2, 32)}


# ------------------------------------------------------------------------------ converter errors
def _small_state_dict(torch, torchvision):
    return dict(_converted(torch, torchvision, "resnet18")[0].state_dict())


def test_converter_errors_name_the_key_and_assign_nothing(torch, torchvision):
    state = _small_state_dict(torch, torchvision)
    resnet, fpn = _ours("resnet18")
    tvconvert.load_resnet_fpn_weights(resnet, fpn, state, prefix="")
    snapshot = resnet.stem_conv.kernel.numpy()

    missing = dict(state)
    del missing["body.layer2.0.downsample.1.running_var"]
    with pytest.raises(KeyError, match=r"body\.layer2\.0\.downsample\.1\.running_var"):
        tvconvert.load_resnet_fpn_weights(resnet, fpn, missing, prefix="")

    wrong = {k: (v * 0 if k == "body.conv1.weight" else v) for k, v in state.items()}
    wrong["body.layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 3)
    with pytest.raises(ValueError, match=r"body\.layer3\.1\.conv2\.weight.*\(256, 256, 3, 3\).*"
                                         r"\(256, 256, 1, 3\)"):
        tvconvert.load_resnet_fpn_weights(resnet, fpn, wrong, prefix="")
    np.testing.assert_array_equal(resnet.stem_conv.kernel.numpy(), snapshot)  # all or nothing

    extra = dict(state, **{"body.layer4.2.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected.*body\.layer4\.2\.conv1\.weight"):
        tvconvert.load_resnet_fpn_weights(resnet, fpn, extra, prefix="")


def test_converter_prefixes_old_fpn_keys_and_numpy(torch, torchvision):
    state = _small_state_dict(torch, torchvision)
    _, ref_resnet, ref_fpn = _converted(torch, torchvision, "resnet18")
    # Mask R-CNN style prefix, numpy values, pre-0.13 FPN names (no ".0"), BN num_batches_tracked.
    old = {}
    for k, v in state.items():
        k = k.replace("blocks.", "blocks#").replace("#0.0.", "#0.").replace("#1.0.", "#1.")
        k = k.replace("#2.0.", "#2.").replace("#3.0.", "#3.").replace("#", ".")
        old["backbone." + k] = v.numpy()
    old["backbone.body.bn1.num_batches_tracked"] = np.array(0)
    old["roi_heads.box_head.fc6.weight"] = np.zeros((2, 2))  # outside the prefix: left alone
    assert "backbone.fpn.inner_blocks.0.weight" in old
    resnet, fpn = _ours("resnet18")
    consumed = tvconvert.load_resnet_fpn_weights(resnet, fpn, old)
    assert consumed == {k for k in old if k.startswith("backbone.")}
    for a, b in zip(resnet.weights + fpn.weights, ref_resnet.weights + ref_fpn.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # ImageNet classification checkpoint: prefix "", fc.* ignored explicitly.
    body = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    body["fc.weight"] = np.zeros((1000, 512))
    with pytest.raises(ValueError, match="fc.weight"):
        tvconvert.load_resnet_weights(ResNet(18), body, prefix="")
    r = ResNet(18)
    assert len(tvconvert.load_resnet_weights(r, body, prefix="", ignore_prefixes=("fc.",))) == len(
        body) - 1
