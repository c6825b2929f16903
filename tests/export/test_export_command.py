"""``python -m keras_maskrcnn.export`` arguments: formats, --device (CPU kernels only in a CPU
SavedModel), --quantize only for LiteRT."""
import os

import pytest

from keras_maskrcnn import build_model, load_config
from keras_maskrcnn.accel.layers import ACCELERATED
from keras_maskrcnn.export import command
from support import CONFIGS

ACCEL_CLASSES = tuple(accelerated for accelerated, _ in ACCELERATED.values())


def _accelerated_layers(export_format, device):
    override = command.accel_override(export_format, device)
    cfg = load_config(os.path.join(CONFIGS, "tiny.yaml"),
                      ["model.accel=on"] + ([override] if override else []))
    model = build_model(cfg, build=False)
    return [l for l in model._flatten_layers() if isinstance(l, ACCEL_CLASSES)]


def test_cpu_kernels_only_in_a_cpu_saved_model():
    assert _accelerated_layers("saved_model", "cpu")  # the config's model.accel kept
    for export_format, device in (("saved_model", "gpu"), ("onnx", "cpu"), ("litert", "cpu"),
                                  ("onnx", "gpu")):
        assert _accelerated_layers(export_format, device) == [], (export_format, device)


def test_bad_arguments_fail_before_building(tmp_path, capsys):
    base = ["--config", os.path.join(CONFIGS, "tiny.yaml"), "--weights", "w.weights.h5",
            "--output", str(tmp_path / "m")]
    with pytest.raises(SystemExit, match="--quantize applies to --format litert only"):
        command.main(base + ["--format", "onnx", "--quantize", "dynamic"])
    with pytest.raises(SystemExit):
        command.main(base + ["--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_portable_graph_refuses_what_the_files_could_not_run():
    from keras_maskrcnn.export.image_graph import portable
    adaptive = build_model(load_config(os.path.join(CONFIGS, "tiny.yaml"),
                                       ["model.accel=off", "model.roi_align.sampling_ratio=0"]),
                           build=False)
    with pytest.raises(ValueError, match="fixed sampling_ratio.*SavedModel"):
        with portable(adaptive, "onnx"):
            pass
    d2_sizes = build_model(load_config(os.path.join(CONFIGS, "tiny.yaml"),
                                       ["model.accel=off", "input.resize_style=detectron2"]),
                           build=False)
    with portable(d2_sizes, "onnx"):  # ONNX Runtime computes float64
        assert d2_sizes.portable and d2_sizes.box_pooler.implementation == "gather"
    assert not d2_sizes.portable and d2_sizes.box_pooler.implementation == "crop_and_resize"
    with pytest.raises(ValueError, match="litert export: input.resize_style 'detectron2'"):
        with portable(d2_sizes, "litert"):
            pass


def test_unportable_model_is_refused_before_its_weights_load(tmp_path, capsys):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"")  # never read: the check comes first
    with pytest.raises(SystemExit):
        command.main(["--config", os.path.join(CONFIGS, "tiny.yaml"), "--weights", str(weights),
                      "--output", str(tmp_path / "m.onnx"), "--format", "onnx",
                      "--set", "model.roi_align.sampling_ratio=0"])
    err = capsys.readouterr().err
    assert "fixed sampling_ratio" in err and "export a SavedModel instead" in err
    assert not (tmp_path / "m.onnx").exists()
