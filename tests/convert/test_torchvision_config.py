"""The config written for converted torchvision checkpoints."""
import pytest

from keras_maskrcnn.convert.torchvision_models import ARCHITECTURES, torchvision_config


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_coco_checkpoints_run_frozen_batch_norm_with_eps_zero(arch):
    """torchvision calls overwrite_eps(model, 0.0) after loading its COCO_V1 weights."""
    cfg = torchvision_config(arch)
    assert cfg.model.backbone.bn_eps == 0.0
    assert cfg.model.roi_align.aligned is False and cfg.model.roi_align.sampling_ratio == 2
