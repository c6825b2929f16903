"""The config written for converted torchvision checkpoints."""
import pytest

from keras_maskrcnn.convert.torchvision_models import (ARCHITECTURES, resolve_weights,
                                                     torchvision_config)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_coco_checkpoints_run_frozen_batch_norm_with_eps_zero(arch):
    """torchvision calls overwrite_eps(model, 0.0) after loading its COCO_V1 weights."""
    cfg = torchvision_config(arch)
    assert cfg.model.backbone.bn_eps == 0.0
    assert cfg.model.roi_align.aligned is False and cfg.model.roi_align.sampling_ratio == 2


# ----------------------------------------------------------- which weights: FrozenBN eps
@pytest.mark.parametrize("name, kind, eps", [
    ("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "coco_v1", 0.0),
    ("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "coco_v1", 0.0),
    ("keypointrcnn_resnet50_fpn_coco-fc266e95.pth", "coco_v1", 0.0),
    ("keypointrcnn_resnet50_fpn_coco-9f466800.pth", "coco_legacy", 1e-5),
    ("my_finetuned_maskrcnn.pth", "trained", 1e-5)])
def test_auto_weights_by_released_file_name(name, kind, eps):
    """torchvision/models/detection: overwrite_eps(model, 0.0) only for the COCO_V1 weights
    (the legacy keypoint file and models built without them keep FrozenBatchNorm2d's 1e-5)."""
    got = resolve_weights(f"/some/dir/{name}")
    assert got[:2] == (kind, eps) and name in got[2]
    assert torchvision_config("keypointrcnn_resnet50_fpn", weights=kind).model.backbone.bn_eps \
        == eps
    assert resolve_weights(f"/d/{name}", "coco_v1")[:2] == ("coco_v1", 0.0)  # explicit wins
    assert resolve_weights({}, "auto")[:2] == ("trained", 1e-5)  # no file name
    with pytest.raises(ValueError, match="weights must be one of"):
        resolve_weights(name, "coco")


class _Stop(Exception):
    pass


def test_cli_weights_flag_and_log_line(tmp_path, monkeypatch, caplog):
    """``--weights`` reaches the config and one line names the eps used and why."""
    import numpy as np

    from keras_maskrcnn import builders
    from keras_maskrcnn.convert import __main__ as cli
    from keras_maskrcnn.convert import torchvision as tv

    state = {"roi_heads.box_predictor.cls_score.weight": np.zeros((2, 4), np.float32),
             "roi_heads.keypoint_predictor.kps_score_lowres.weight": np.zeros(1, np.float32)}
    monkeypatch.setattr(tv, "load_state_dict", lambda checkpoint: state)
    seen = []

    def build(cfg):
        seen.append(cfg.model.backbone.bn_eps)
        raise _Stop

    monkeypatch.setattr(builders, "build_model", build)
    for weights, name, eps in [("auto", "keypointrcnn_resnet50_fpn_coco-fc266e95.pth", 0.0),
                               ("auto", "keypointrcnn_resnet50_fpn_coco-9f466800.pth", 1e-5),
                               ("trained", "keypointrcnn_resnet50_fpn_coco-fc266e95.pth", 1e-5)]:
        caplog.clear()
        with pytest.raises(_Stop):
            cli.main(["torchvision", "--arch", "keypointrcnn_resnet50_fpn", "--weights", weights,
                      "--checkpoint", str(tmp_path / name), "--output", str(tmp_path / "o")])
        assert seen[-1] == eps
        lines = [m for m in caplog.messages if "eps" in m]
        assert lines == [f"FrozenBatchNorm eps {eps:g}: " + (
            f"{name} is torchvision's released "
            f"{'coco_v1' if eps == 0 else 'coco_legacy'} file" if weights == "auto"
            else f"--weights {weights}")]
