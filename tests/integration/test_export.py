"""SavedModel export: CLI, both signatures in fresh TF-only processes, session loader, CLI show.

The oracle is ``model.detect`` (itself checked against torchvision in test_model.py) on the
same decoded images. The export is made once per module and model through the CLI ``main``
(random weights, score threshold 0 so that detections exist, category ids 11, 22, 33): Mask
R-CNN on the tiny config, YOLACT on the tiny YOLACT (``support.models``; whole-image masks at
prototype resolution, ``mask_type == "image"``).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model, load_config
from keras_maskrcnn import export as export_lib
from keras_maskrcnn import preprocessing
from keras_maskrcnn.data import images as images_lib
from keras_maskrcnn.postprocessing import Postprocessor
from keras_maskrcnn.ops.masks import paste_masks
from support import CONFIGS
from support import models as models_support

CONFIG = os.path.join(CONFIGS, "tiny.yaml")
OVERRIDES = ["model.roi_heads.score_threshold=0.0"]
CATEGORY_IDS = [11, 22, 33]
SIZES = [(33, 200), (120, 90)]  # (H0, W0): per-axis resize ratios differ; different paddings
TIMEOUT = 180

# Shared head of both fresh-process scripts. ``import tensorflow`` (2.21) itself imports the
# keras package (tf.keras API wiring), so "keras not in sys.modules" cannot hold; instead every
# later import of keras / keras_maskrcnn raises, and no new keras module may appear.
GUARD = r"""
import sys, numpy as np, tensorflow as tf
BLOCKED = ("keras", "keras_maskrcnn", "tf_keras", "torch")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked import of " + name)
before = {m for m in sys.modules if m.split(".")[0] in BLOCKED}
sys.meta_path.insert(0, Block())
def report():
    new = sorted({m for m in sys.modules if m.split(".")[0] in BLOCKED} - before)
    print("FORBIDDEN_MODULES", new + [m for m in ("keras_maskrcnn", "torch") if m in sys.modules])
"""

# The fresh process: TF Serving's loading path first (TF1 session + the SignatureDef's tensor
# names, what the C++ model server does), then the TF2 loader (tf.saved_model.load).
SERVING_SCRIPT = GUARD + r"""
src, dst, model_dir = sys.argv[1], sys.argv[2], sys.argv[3]
data = np.load(src, allow_pickle=False)
out = {}
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], model_dir)
    feeds = {"serving_default": {"image_bytes": np.array(
                 [data["png0"].tobytes(), data["png1"].tobytes()], dtype=object)},
             "serving_images": {"images": data["batch"]}}
    for name, inputs in feeds.items():
        sig = meta.signature_def[name]
        fetch = {k: v.name for k, v in sig.outputs.items()}
        feed = {sig.inputs[k].name: v for k, v in inputs.items()}
        for k, v in sess.run(fetch, feed).items():
            out["session_" + name + "/" + k] = v

loaded = tf.saved_model.load(model_dir)
def run(prefix, fn, **kw):
    for k, v in fn(**kw).items():
        out[prefix + k] = v.numpy()
sig = loaded.signatures
run("png_", sig["serving_default"], image_bytes=tf.constant([data["png0"].tobytes(),
                                                              data["png1"].tobytes()]))
run("jpeg_", sig["serving_default"], image_bytes=tf.constant([data["jpeg0"].tobytes()]))
run("empty_", sig["serving_default"], image_bytes=tf.zeros([0], tf.string))
run("uint8_", sig["serving_images"], images=tf.constant(data["batch"]))
run("attr_", loaded.serving_images, images=tf.constant(data["batch"][:1]))
np.savez(dst, **out)
report()
"""


def _image(height, width, seed):
    """Noise with a few flat rectangles (something for the RPN to see)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[y:y + height // 3, x:x + width // 3] = rng.integers(0, 255, 3)
    return image


def _run_in_fresh_processes(src, dst, model_dir):
    """SERVING_SCRIPT and ``saved_model_cli show --all``, concurrently; (outputs, cli text)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
             for cmd in ([sys.executable, "-c", SERVING_SCRIPT, src, dst, model_dir],
                         [cli, "show", "--dir", model_dir, "--all"])]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, stderr[-4000:]
        results.append(stdout)
    assert "FORBIDDEN_MODULES []" in results[0], results[0]
    return dict(np.load(dst)), results[1]


def _export_and_serve(tmp, config, overrides):
    """CLI export (full masks) of a random model; the model; inputs; fresh-process outputs."""
    cfg = load_config(config, overrides)
    model = build_model(cfg, category_ids=CATEGORY_IDS)
    weights = str(tmp / "tiny.weights.h5")
    model.save_weights(weights)
    model_dir = str(tmp / "saved_model")
    export_lib.main(["--config", config, "--weights", weights, "--output", model_dir,
                     "--full-masks", "--category-ids", ",".join(map(str, CATEGORY_IDS)),
                     "--set", *overrides])
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    jpeg = tf.io.encode_jpeg(images[0], quality=80).numpy()
    inputs = {"png0": tf.io.encode_png(images[0]).numpy(),
              "png1": tf.io.encode_png(images[1]).numpy(), "jpeg0": jpeg,
              "batch": np.stack([images[0], images[0][:, ::-1]])}
    src = str(tmp / "inputs.npz")
    np.savez(src, **{k: np.frombuffer(v, np.uint8) if isinstance(v, bytes) else v
                     for k, v in inputs.items()})
    served, cli_show = _run_in_fresh_processes(src, str(tmp / "served.npz"), model_dir)
    return {"model": model, "dir": model_dir, "images": images, "inputs": inputs,
            "jpeg_image": images_lib.read_image(jpeg),  # the pixels serving decodes
            "served": served, "cli_show": cli_show}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny Mask R-CNN exported and served (``_export_and_serve``)."""
    return _export_and_serve(tmp_path_factory.mktemp("export"), CONFIG, OVERRIDES)


def _served(outputs, prefix, b):
    """Image b of a signature's outputs (saved with a name prefix)."""
    return {k[len(prefix):]: v[b] for k, v in outputs.items() if k.startswith(prefix)}


def _assert_detections_match(served, reference, image_shape, box_atol):
    """The outputs both architectures serve == model.detect's: count, sizes, boxes, scores,
    labels and the full masks on their zero-padded canvas. Returns n."""
    n = int(served["num_detections"])
    assert n == len(reference["scores"]) and n > 0
    np.testing.assert_array_equal(served["original_sizes"], image_shape)
    np.testing.assert_allclose(served["boxes"][:n], reference["boxes"], atol=box_atol, rtol=0)
    np.testing.assert_allclose(served["scores"][:n], reference["scores"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(served["classes"][:n], reference["labels"])
    h, w = image_shape
    full = served["full_masks"][:n]
    np.testing.assert_array_equal(full[:, :h, :w], reference["masks"].astype(np.uint8))
    assert not full[:, h:].any() and not full[:, :, w:].any()  # canvas padding is zero
    return n


def _assert_matches_detect(served, reference, image_shape, box_atol=1e-3):
    """One image's served outputs == model.detect's result (order, labels, masks...)."""
    n = _assert_detections_match(served, reference, image_shape, box_atol)
    np.testing.assert_allclose(served["keypoints"][:n], reference["keypoints"], atol=box_atol,
                               rtol=1e-5)
    h, w = image_shape
    pasted = paste_masks(served["masks"][None, :n], served["boxes"][None, :n], h, w)[0]
    mismatch = np.mean((pasted.numpy() > 0.5) != reference["masks"])
    assert mismatch < 1e-3, mismatch  # RoI masks + boxes reproduce the pasted masks
    for key in ("boxes", "scores", "classes", "masks", "keypoints", "full_masks"):
        assert not served[key][n:].any(), key  # padding rows are zero


def test_bytes_signature_matches_detect(exported):
    model, images = exported["model"], exported["images"]
    references = model.detect(images)
    served = exported["served"]
    canvas = np.max(SIZES, axis=0)
    assert served["png_full_masks"].shape[2:] == tuple(canvas)  # padded to the largest image
    assert served["png_boxes"].shape == (2, 10, 4)
    for b, (image, reference) in enumerate(zip(images, references)):
        one = _served(served, "png_", b)
        assert set(one["classes"][:one["num_detections"]]) <= set(CATEGORY_IDS)
        _assert_matches_detect(one, reference, image.shape[:2])


def test_jpeg_bytes_decode_like_tensorflow(exported):
    """JPEG is lossy, but the graph decodes it with the same decoder as tf.io.decode_jpeg."""
    reference = exported["model"].detect([exported["jpeg_image"]])[0]
    _assert_matches_detect(_served(exported["served"], "jpeg_", 0), reference, SIZES[0])


def test_uint8_signature_matches_detect(exported):
    model, batch = exported["model"], exported["inputs"]["batch"]
    references = model.detect(list(batch))
    served = exported["served"]
    for b, reference in enumerate(references):
        _assert_matches_detect(_served(served, "uint8_", b), reference, SIZES[0])
    attr = _served(served, "attr_", 0)  # the endpoint as a loaded attribute, batch of one
    _assert_matches_detect(attr, references[0], SIZES[0])


def test_empty_request(exported):
    served = exported["served"]
    assert served["empty_boxes"].shape == (0, 10, 4)
    assert served["empty_full_masks"].shape[:2] == (0, 10)


def test_session_loader_matches_eager_loader(exported):
    """TF Serving's loading path (TF1 session + SignatureDef tensor names) gives the same."""
    served = exported["served"]
    for name, prefix in (("serving_default", "png_"), ("serving_images", "uint8_")):
        keys = sorted(k.split("/")[1] for k in served if k.startswith(f"session_{name}/"))
        assert keys == sorted(["boxes", "scores", "classes", "num_detections", "masks",
                               "keypoints", "full_masks", "original_sizes"])
        for key in keys:
            np.testing.assert_allclose(served[f"session_{name}/{key}"], served[prefix + key],
                                       atol=1e-4, rtol=1e-5, err_msg=f"{name} {key}")


def test_saved_model_cli_shows_batch_first_signatures(exported):
    text = exported["cli_show"]
    blocks = {name: text.split(f"signature_def['{name}']")[1].split("signature_def[")[0]
              for name in ("serving_default", "serving_images")}
    assert "inputs['image_bytes']" in blocks["serving_default"]
    assert "DT_STRING\n        shape: (-1)\n" in blocks["serving_default"]
    assert "inputs['images']" in blocks["serving_images"]
    assert "DT_UINT8\n        shape: (-1, -1, -1, 3)" in blocks["serving_images"]
    for block in blocks.values():
        for key, shape in (("boxes", "(-1, 10, 4)"), ("scores", "(-1, 10)"),
                           ("classes", "(-1, 10)"), ("num_detections", "(-1)"),
                           ("masks", "(-1, 10, 28, 28)"), ("keypoints", "(-1, 10, 4, 3)"),
                           ("full_masks", "(-1, 10, -1, -1)")):
            assert f"outputs['{key}']" in block
            assert f"shape: {shape}\n" in block.split(f"outputs['{key}']")[1][:120], key
        assert "tensorflow/serving/predict" in block


def test_mutations_would_fail(exported):
    """The comparisons above catch a missing or transposed resize ratio and a wrong image."""
    model, images = exported["model"], exported["images"]
    reference = model.detect(images[:1])[0]
    served = _served(exported["served"], "png_", 0)
    n = int(served["num_detections"])
    h0, w0 = SIZES[0]
    images_in, sizes = model.preprocessor(tf.constant(images[0])[None])
    h, w = sizes.numpy()[0]
    unscaled = dict(served, boxes=served["boxes"] / np.array([w0 / w, h0 / h] * 2, np.float32))
    swapped = dict(served, boxes=served["boxes"] * np.array([h0 / h * w / w0,
                                                             w0 / w * h / h0] * 2, np.float32))
    for mutant in (unscaled, swapped):
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(mutant["boxes"][:n], reference["boxes"], atol=1e-3)
    other = _served(exported["served"], "png_", 1)
    with pytest.raises(AssertionError):
        _assert_matches_detect(dict(other, original_sizes=np.array(SIZES[0])), reference,
                               SIZES[0])


def test_postprocessing_hand_computed():
    """Ratios per axis, category lookup, zeroed padding (full masks: test_preprocessing)."""
    outputs = {"boxes": tf.constant([[[10., 20., 30., 40.], [1., 1., 2., 2.]]]),
               "scores": tf.constant([[0.9, 0.1]]), "classes": tf.constant([[2, 1]]),
               "num_detections": tf.constant([1]),
               "masks": tf.ones([1, 2, 4, 4]), "keypoints": tf.ones([1, 2, 1, 3]) * 10.0}
    postprocessor = Postprocessor(category_ids=CATEGORY_IDS)
    result = postprocessor.serving_outputs(outputs, tf.constant([[50, 100]]),
                                           tf.constant([[100, 400]]))
    np.testing.assert_allclose(result["boxes"][0], [[40, 40, 120, 80], [0, 0, 0, 0]])
    np.testing.assert_array_equal(result["classes"], [[22, 0]])
    np.testing.assert_allclose(result["scores"], [[0.9, 0.0]])
    np.testing.assert_allclose(result["keypoints"][0, :, 0], [[40, 20, 10], [0, 0, 0]])
    assert not result["masks"][0, 1].numpy().any()


def test_batched_preprocessing_equals_one_image():
    """serving_images resizes a batch at once; detect one image: the same pixels."""
    image = _image(37, 61, seed=3)
    preprocessor = preprocessing.Preprocessor.shorter_side(128, 128, 32)
    batched, sizes = preprocessor(tf.constant(np.stack([image, image])))
    single, single_sizes = preprocessor(tf.constant(image)[None])
    assert batched.shape == (2,) + tuple(single.shape[1:])
    np.testing.assert_array_equal(batched[1], single[0])
    np.testing.assert_array_equal(sizes, np.repeat(single_sizes.numpy(), 2, axis=0))


def test_category_ids_from_coco_json(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]}))
    assert export_lib.parse_category_ids(str(path)) == [3, 7]
    assert export_lib.parse_category_ids("5, 6,9") == [5, 6, 9]
    assert export_lib.parse_category_ids(None) is None


def test_export_rejects_bad_requests(exported, tmp_path):
    model = exported["model"]
    model.category_ids = [1, 2]
    try:
        with pytest.raises(ValueError, match="category_ids has 2"):
            export_lib.export_model(model, str(tmp_path / "x"))
    finally:
        model.category_ids = CATEGORY_IDS
    box_only = build_model(load_config(CONFIG, ["model.mask_head.enabled=false",
                                                "model.keypoint_head.enabled=false"]))
    with pytest.raises(ValueError, match="mask head"):
        export_lib.export_model(box_only, str(tmp_path / "y"), include_full_masks=True)


# ----------------------------------------------------------------------------------- YOLACT
YOLACT_CONFIG = os.path.join(CONFIGS, "yolact_shapes.yaml")
YOLACT_OVERRIDES = models_support.tiny_yolact_overrides(**{"model.yolact.score_threshold": 0.0})
PROTO = models_support.SIZE // 4  # prototype side of the 128 px square input


@pytest.fixture(scope="module")
def yolact_exported(tmp_path_factory):
    """The tiny YOLACT exported and served (``_export_and_serve``)."""
    return _export_and_serve(tmp_path_factory.mktemp("export_yolact"), YOLACT_CONFIG,
                             YOLACT_OVERRIDES)


def _assert_yolact_matches_detect(served, reference, image_shape, box_atol=1e-3):
    """One image's served YOLACT outputs == model.detect's (whole-image masks)."""
    n = _assert_detections_match(served, reference, image_shape, box_atol)
    assert served["masks"].shape[1:] == (PROTO, PROTO)  # prototype resolution
    h, w = image_shape
    resized = tf.image.resize(np.transpose(served["masks"][:n], [1, 2, 0]), (h, w),
                              method="bilinear", antialias=False).numpy()
    mismatch = np.mean((np.transpose(resized, [2, 0, 1]) > 0.5) != reference["masks"])
    assert mismatch < 1e-3, mismatch  # the prototype-resolution masks reproduce them
    for key in ("boxes", "scores", "classes", "masks", "full_masks"):
        assert not served[key][n:].any(), key  # padding rows are zero


def test_yolact_signatures_in_a_fresh_process_match_detect(yolact_exported):
    model, images, served = (yolact_exported[k] for k in ("model", "images", "served"))
    assert "keypoints" not in {k.split("_", 1)[1] for k in served}
    references = model.detect(images)
    for b, (image, reference) in enumerate(zip(images, references)):
        one = _served(served, "png_", b)
        assert set(one["classes"][:one["num_detections"]]) <= set(CATEGORY_IDS)
        _assert_yolact_matches_detect(one, reference, image.shape[:2])
    jpeg = model.detect([yolact_exported["jpeg_image"]])[0]
    _assert_yolact_matches_detect(_served(served, "jpeg_", 0), jpeg, SIZES[0])
    batch = yolact_exported["inputs"]["batch"]
    for b, reference in enumerate(model.detect(list(batch))):
        _assert_yolact_matches_detect(_served(served, "uint8_", b), reference, SIZES[0])
    _assert_yolact_matches_detect(_served(served, "attr_", 0), model.detect(list(batch[:1]))[0],
                                  SIZES[0])
    assert served["empty_boxes"].shape == (0, 10, 4)
    assert served["empty_masks"].shape == (0, 10, PROTO, PROTO)  # map_fn stacked no image
    assert served["empty_full_masks"].shape[:2] == (0, 10)


def test_yolact_session_loader_matches_eager_loader(yolact_exported):
    served = yolact_exported["served"]
    for name, prefix in (("serving_default", "png_"), ("serving_images", "uint8_")):
        keys = sorted(k.split("/")[1] for k in served if k.startswith(f"session_{name}/"))
        assert keys == sorted(["boxes", "scores", "classes", "num_detections", "masks",
                               "full_masks", "original_sizes"])
        for key in keys:
            np.testing.assert_allclose(served[f"session_{name}/{key}"], served[prefix + key],
                                       atol=1e-4, rtol=1e-5, err_msg=f"{name} {key}")


def test_yolact_saved_model_cli_shows_batch_first_signatures(yolact_exported):
    text = yolact_exported["cli_show"]
    for name in ("serving_default", "serving_images"):
        block = text.split(f"signature_def['{name}']")[1].split("signature_def[")[0]
        for key, shape in (("boxes", "(-1, 10, 4)"), ("scores", "(-1, 10)"),
                           ("classes", "(-1, 10)"), ("num_detections", "(-1)"),
                           ("masks", f"(-1, 10, {PROTO}, {PROTO})"),
                           ("full_masks", "(-1, 10, -1, -1)")):
            assert f"outputs['{key}']" in block
            assert f"shape: {shape}\n" in block.split(f"outputs['{key}']")[1][:120], key
        assert "tensorflow/serving/predict" in block
