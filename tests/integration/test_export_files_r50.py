"""ONNX and LiteRT files of the R50 models (slow): Mask R-CNN and Keypoint R-CNN converted from
torchvision's ``maskrcnn_resnet50_fpn`` / ``keypointrcnn_resnet50_fpn`` with the seeded random
weights of tests/integration/test_parity.py (``torchvision_model``: peaky scores, 100
detections per photo at its 0.01 threshold, min size 320 / max 512), and YOLACT-R50 at 550
(random Keras initialisation, seed 0, class logits spread by
``support.exported.calibrate_yolact_``: uncalibrated, all its scores are ~1.0 ties), each
run in ONNX Runtime and the LiteRT interpreter on test_parity's three photos (400x600
shrunk, 300x451 enlarged, a 480x280 portrait), against ``model.detect`` with the issue 21
bars (``support.exported``). Conversions take minutes."""
import keras
import pytest

from keras_maskrcnn import build_model, load_config
from keras_maskrcnn.export.runtimes import litert_runner, onnx_runner
from support import CONFIGS, exported

pytestmark = pytest.mark.slow


def _converted(arch):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from keras_maskrcnn.convert.torchvision_models import from_torchvision
    from test_parity import OVERRIDES, photos, torchvision_model
    images = list(photos().values())
    reference = torchvision_model(torch, torchvision, arch, images)
    model = from_torchvision(reference.state_dict(), arch,
                             overrides=list(OVERRIDES) + ["model.accel=off"])
    return model, images


def _yolact():
    from test_parity import photos
    keras.utils.set_random_seed(0)
    config = load_config(f"{CONFIGS}/yolact_r50_fpn_coco.yaml", ["model.accel=off"])
    model, images = build_model(config), list(photos().values())
    exported.calibrate_yolact_(model, images[0])
    return model, images


MODELS = {"maskrcnn": lambda: _converted("maskrcnn_resnet50_fpn"),
          "keypointrcnn": lambda: _converted("keypointrcnn_resnet50_fpn"),
          "yolact": _yolact}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    model, images = MODELS[request.param]()
    references = [model.detect([image])[0] for image in images]
    assert all(len(r["scores"]) >= 10 for r in references), [len(r["scores"]) for r in references]
    return model, images, references


def test_onnx_file_matches_detect(case, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra installs onnxruntime")
    pytest.importorskip("tf2onnx", reason="the onnx extra installs tf2onnx")
    from keras_maskrcnn.export.onnx import export_onnx
    model, images, references = case
    path = export_onnx(model, str(tmp_path / "model.onnx"))
    matched = exported.check_file(model, images, references, onnx_runner(path))
    print(f"\n[export r50] onnx {model.name}: {matched} detections matched")


def test_litert_file_matches_detect(case, tmp_path):
    pytest.importorskip("ai_edge_litert.interpreter",
                        reason="the litert extra installs ai-edge-litert")
    from keras_maskrcnn.export.litert import export_litert
    model, images, references = case
    path = export_litert(model, str(tmp_path / "model.tflite"))
    matched = exported.check_file(model, images, references, litert_runner(path))
    print(f"\n[export r50] litert {model.name}: {matched} detections matched")
