"""ONNX and LiteRT files of a tiny Keypoint R-CNN (masks and keypoints), run in ONNX Runtime and
the LiteRT interpreter on three photos that need resizing, against ``model.detect``: the
issue 21 bars (``support.exported``). The files' RoI masks are pasted with
``model.postprocessor.paste_masks``, as docs/deploy.md tells a user. The model is random,
calibrated so that its scores, masks and heatmaps are spread like a trained model's."""
import numpy as np
import pytest

from keras_maskrcnn import build_model
from support import exported
from support.models import tiny_config


@pytest.fixture(scope="module")
def keypoint_rcnn():
    config = tiny_config(**{"model.accel": "off", "input.min_size_test": 160,
                            "input.max_size": 224, "model.roi_heads.score_threshold": 0.05})
    model = build_model(config, category_ids=[3, 5, 9])
    photos = exported.photos()
    exported.calibrate_maskrcnn_(model, photos[0])
    return model, photos, [model.detect([p])[0] for p in photos]


def _detections(model, outputs, photo):
    """File outputs (batch of one) -> ``detect``'s dict: the first n rows, masks pasted."""
    n = int(outputs["num_detections"][0])
    boxes = outputs["boxes"][:, :n]
    masks = model.postprocessor.paste_masks(outputs["masks"][:, :n], boxes,
                                            np.array([photo.shape[:2]], np.int32))
    return {"boxes": boxes[0], "scores": outputs["scores"][0, :n],
            "labels": outputs["classes"][0, :n], "masks": np.asarray(masks[0]),
            "keypoints": outputs["keypoints"][0, :n]}


def _check(model, photos, references, run):
    matched = 0
    for photo, reference in zip(photos, references):
        outputs = run(photo)
        np.testing.assert_array_equal(outputs["original_sizes"], [photo.shape[:2]])
        ours = _detections(model, outputs, photo)
        assert set(ours["labels"].tolist()) <= {3, 5, 9}  # dataset ids
        matched += exported.assert_matches_detect(reference, ours)
    assert matched >= 15  # enough detections for the bars to mean something


def test_onnx_file_in_onnx_runtime_matches_detect(keypoint_rcnn, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra installs onnxruntime")
    pytest.importorskip("tf2onnx", reason="the onnx extra installs tf2onnx")
    from keras_maskrcnn.export.onnx import export_onnx

    model, photos, references = keypoint_rcnn
    path = export_onnx(model, str(tmp_path / "model.onnx"))
    assert model.box_pooler.implementation == "crop_and_resize" and not model.portable
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert set(names) == {"boxes", "scores", "classes", "num_detections", "original_sizes",
                          "masks", "keypoints"}
    _check(model, photos, references,
           lambda photo: dict(zip(names, session.run(None, {"images": photo[None]}))))


def test_litert_file_in_litert_interpreter_matches_detect(keypoint_rcnn, tmp_path):
    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="the litert extra installs ai-edge-litert")
    from keras_maskrcnn.export.litert import SIGNATURE, export_litert

    model, photos, references = keypoint_rcnn
    path = export_litert(model, str(tmp_path / "model.tflite"))
    runner = litert.Interpreter(model_path=path).get_signature_runner(SIGNATURE)
    _check(model, photos, references, lambda photo: runner(images=photo[None]))
