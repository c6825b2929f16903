"""ONNX and LiteRT files of the tiny models, run in ONNX Runtime and the LiteRT interpreter on
three photo crops that need resizing (300x260, 200x300, 151x226), against ``model.detect``:
the issue 21 bars (``support.exported``: >= 99% of detect's detections matched with the same
label, box IoU >= 0.98 and score within 1e-3; matched mask IoU >= 0.97; keypoints within
0.5 px). The files' masks are pasted by ``model.postprocessor.paste_masks``
(``export.runtimes.file_detections``), as docs/deploy.md tells a user.

Models: a tiny Keypoint R-CNN (masks and keypoints; random, calibrated so that its scores,
masks and heatmaps are spread like a trained model's) and the tiny YOLACT at 100 px (C3..C5
13, 7, 4: the FPN's bilinear top-down has non-integer ratios, as R50 at 550 does). The R50
models are tests/integration/test_export_files_r50.py (slow)."""
import pytest

from keras_maskrcnn import build_model
from keras_maskrcnn.export.runtimes import litert_runner, onnx_runner
from support import exported
from support.models import tiny_config, tiny_yolact_config

CATEGORY_IDS = [3, 5, 9]
OUTPUTS = {"boxes", "scores", "classes", "num_detections", "original_sizes", "masks"}


def _keypoint_rcnn():
    config = tiny_config(**{"model.accel": "off", "input.min_size_test": 160,
                            "input.max_size": 224, "model.roi_heads.score_threshold": 0.05})
    model = build_model(config, category_ids=CATEGORY_IDS)
    exported.calibrate_maskrcnn_(model, exported.photos()[0])
    return model, OUTPUTS | {"keypoints"}, 15


def _yolact():
    config = tiny_yolact_config(**{"model.accel": "off", "input.size": 100})
    return build_model(config, category_ids=CATEGORY_IDS), OUTPUTS, 10


@pytest.fixture(scope="module", params=["keypoint_rcnn", "yolact"])
def case(request):
    model, outputs, min_matched = {"keypoint_rcnn": _keypoint_rcnn,
                                   "yolact": _yolact}[request.param]()
    photos = exported.photos()
    return model, photos, [model.detect([p])[0] for p in photos], outputs, min_matched


def test_onnx_file_in_onnx_runtime_matches_detect(case, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra installs onnxruntime")
    pytest.importorskip("tf2onnx", reason="the onnx extra installs tf2onnx")
    from keras_maskrcnn.export.onnx import export_onnx

    model, photos, references, outputs, min_matched = case
    path = export_onnx(model, str(tmp_path / "model.onnx"))
    assert not model.portable  # the export's switches are undone after it
    poolers = [getattr(model, name) for name in ("box_pooler", "mask_pooler") if
               getattr(model, name, None) is not None]
    assert all(p.implementation == "crop_and_resize" for p in poolers)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    shape = session.get_inputs()[0].shape  # (1, H, W, 3): H and W symbolic (dynamic)
    assert shape[0] == 1 and shape[3] == 3 and not isinstance(shape[1], int), shape
    assert {o.name for o in session.get_outputs()} == outputs
    run = onnx_runner(path)
    assert exported.check_file(model, photos, references, run, CATEGORY_IDS) >= min_matched


def test_litert_file_in_litert_interpreter_matches_detect(case, tmp_path):
    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="the litert extra installs ai-edge-litert")
    from keras_maskrcnn.export.litert import SIGNATURE, export_litert

    model, photos, references, outputs, min_matched = case
    path = export_litert(model, str(tmp_path / "model.tflite"))
    runner = litert.Interpreter(model_path=path).get_signature_runner(SIGNATURE)
    assert list(runner.get_input_details()) == ["images"]
    assert set(runner.get_output_details()) == outputs
    run = litert_runner(path)  # its runner resizes the input to each photo
    assert exported.check_file(model, photos, references, run, CATEGORY_IDS) >= min_matched
