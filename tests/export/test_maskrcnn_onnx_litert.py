"""ONNX and LiteRT files of a tiny Keypoint R-CNN (masks and keypoints), run in ONNX Runtime and
the LiteRT interpreter on three photos that need resizing, against ``model.detect``: the
issue 21 bars (``support.exported``). The files' RoI masks are pasted with
``model.postprocessor.paste_masks``, as docs/deploy.md tells a user. The model is random,
calibrated so that its scores, masks and heatmaps are spread like a trained model's."""
import pytest

from keras_maskrcnn import build_model
from keras_maskrcnn.export.runtimes import litert_runner, onnx_runner
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


def test_onnx_file_in_onnx_runtime_matches_detect(keypoint_rcnn, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra installs onnxruntime")
    pytest.importorskip("tf2onnx", reason="the onnx extra installs tf2onnx")
    from keras_maskrcnn.export.onnx import export_onnx

    model, photos, references = keypoint_rcnn
    path = export_onnx(model, str(tmp_path / "model.onnx"))
    assert model.box_pooler.implementation == "crop_and_resize" and not model.portable
    names = [o.name for o in ort.InferenceSession(
        path, providers=["CPUExecutionProvider"]).get_outputs()]
    assert set(names) == {"boxes", "scores", "classes", "num_detections", "original_sizes",
                          "masks", "keypoints"}
    run = onnx_runner(path)
    assert exported.check_file(model, photos, references, run, [3, 5, 9]) >= 15


def test_litert_file_in_litert_interpreter_matches_detect(keypoint_rcnn, tmp_path):
    pytest.importorskip("ai_edge_litert.interpreter",
                        reason="the litert extra installs ai-edge-litert")
    from keras_maskrcnn.export.litert import export_litert

    model, photos, references = keypoint_rcnn
    path = export_litert(model, str(tmp_path / "model.tflite"))
    run = litert_runner(path)
    assert exported.check_file(model, photos, references, run, [3, 5, 9]) >= 15
