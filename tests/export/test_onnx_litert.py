"""ONNX and LiteRT files of the tiny YOLACT, run in ONNX Runtime and the LiteRT interpreter,
against ``model.detect`` on three photos of different sizes (the issue 21 bar): >= 99% of
detect's detections matched (same label, box IoU >= 0.98, score within 1e-3), matched mask
IoU >= 0.97 (``support.exported``). The exported image masks (prototype resolution) are
brought to the photo by ``model.postprocessor.paste_masks`` (``ops.masks_to_image``). Each
file is converted once per module."""
import pytest

from keras_maskrcnn import build_model
from keras_maskrcnn.export.runtimes import litert_runner, onnx_runner
from support import exported
from support.models import tiny_yolact_config


@pytest.fixture(scope="module")
def yolact():
    # 100 px: C3..C5 13, 7, 4, so the FPN's bilinear top-down has non-integer ratios (7 / 4)
    model = build_model(tiny_yolact_config(**{"model.accel": "off", "input.size": 100}),
                        category_ids=[3, 5, 9])
    photos = exported.photos()
    return model, photos, [model.detect([p])[0] for p in photos]


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
    exported.check_file(model, photos, references, onnx_runner(path), [3, 5, 9])


def test_litert_file_in_litert_interpreter_matches_detect(yolact, tmp_path):
    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="the litert extra installs ai-edge-litert")
    from keras_maskrcnn.export.litert import SIGNATURE, export_litert

    model, photos, references = yolact
    path = export_litert(model, str(tmp_path / "model.tflite"))
    runner = litert.Interpreter(model_path=path).get_signature_runner(SIGNATURE)
    assert list(runner.get_input_details()) == ["images"]
    # the runner resizes the input to each photo
    exported.check_file(model, photos, references, litert_runner(path), [3, 5, 9])
