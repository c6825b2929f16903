"""ONNX and LiteRT files of the tiny YOLACT, run in ONNX Runtime and the LiteRT interpreter,
against ``model.detect`` on three photos of different sizes (the issue 21 bar): >= 99% of
detect's detections matched (same label, box IoU >= 0.98, score within 1e-3), matched mask
IoU >= 0.97. The exported image masks (prototype resolution) are brought to the photo with
``ops.masks_to_image``, as the export docstring tells a user. Each file is converted once per
module (tf2onnx / TFLiteConverter: minutes on this 2-core CPU, hence slow)."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model
from keras_maskrcnn.ops.prototype_masks import masks_to_image
from support import detections as det
from support.models import tiny_yolact_config

MATCHED_FRACTION, MASK_IOU = 0.99, 0.97
CROPS = {"astronaut": (300, 260), "coffee": (200, 300), "chelsea": (151, 226)}  # (H0, W0)


def _photos():
    skdata = pytest.importorskip("skimage.data", reason="scikit-image gives the photos")
    return [getattr(skdata, name)()[:h, :w, :3].copy() for name, (h, w) in CROPS.items()]


@pytest.fixture(scope="module")
def yolact():
    # 100 px: C3..C5 13, 7, 4, so the FPN's bilinear top-down has non-integer ratios (7 / 4)
    model = build_model(tiny_yolact_config(**{"model.accel": "off", "input.size": 100}),
                        category_ids=[3, 5, 9])
    photos = _photos()
    return model, photos, [model.detect([p])[0] for p in photos]


def _detections(outputs, photo, threshold):
    """File outputs (batch of one) -> detect's dict: the first n rows, masks on the photo."""
    n = int(outputs["num_detections"][0])
    masks = masks_to_image(outputs["masks"][0, :n], photo.shape[:2], threshold).numpy()
    return {"boxes": outputs["boxes"][0, :n], "scores": outputs["scores"][0, :n],
            "labels": outputs["classes"][0, :n], "masks": masks}


def _assert_matches_detect(reference, ours):
    assert len(reference["scores"]) > 0  # random weights: detections exist
    pairs = det.match_detections(reference, ours)
    matched = [(i, j) for i, j, iou, diff in pairs
               if j >= 0 and iou >= det.DETECTION_IOU and diff <= det.SCORE_TOL]
    assert len(matched) >= MATCHED_FRACTION * len(reference["scores"]), pairs
    ious = [det.mask_iou(reference["masks"][i], ours["masks"][j]) for i, j in matched]
    assert min(ious) >= MASK_IOU, ious


@pytest.mark.slow
def test_onnx_file_in_onnx_runtime_matches_detect(yolact, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra installs onnxruntime")
    pytest.importorskip("tf2onnx", reason="the onnx extra installs tf2onnx")
    from keras_maskrcnn.export.onnx import export_onnx

    model, photos, references = yolact
    path = export_onnx(model, str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    shape = session.get_inputs()[0].shape  # (1, H, W, 3): H and W symbolic (dynamic)
    assert shape[0] == 1 and shape[3] == 3 and not isinstance(shape[1], int), shape
    names = [o.name for o in session.get_outputs()]
    assert set(names) == {"boxes", "scores", "classes", "num_detections", "original_sizes",
                          "masks"}
    for photo, reference in zip(photos, references):
        outputs = dict(zip(names, session.run(None, {"images": photo[None]})))
        np.testing.assert_array_equal(outputs["original_sizes"], [photo.shape[:2]])
        ours = _detections(outputs, photo, model.postprocessor.mask_threshold)
        assert set(ours["labels"].tolist()) <= {3, 5, 9}  # dataset ids
        _assert_matches_detect(reference, ours)


@pytest.mark.slow
def test_litert_file_in_litert_interpreter_matches_detect(yolact, tmp_path):
    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="the litert extra installs ai-edge-litert")
    from keras_maskrcnn.export.litert import SIGNATURE, export_litert

    model, photos, references = yolact
    path = export_litert(model, str(tmp_path / "model.tflite"))
    runner = litert.Interpreter(model_path=path).get_signature_runner(SIGNATURE)
    assert list(runner.get_input_details()) == ["images"]
    for photo, reference in zip(photos, references):
        outputs = runner(images=photo[None])  # the runner resizes the input to each photo
        np.testing.assert_array_equal(outputs["original_sizes"], [photo.shape[:2]])
        ours = _detections(outputs, photo, model.postprocessor.mask_threshold)
        _assert_matches_detect(reference, ours)
