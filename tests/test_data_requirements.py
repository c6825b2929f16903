"""The builders say what data a model needs (``builders.data_requirements``) and the job asks
them: no module outside ``builders.py`` and ``config/`` tests ``model.architecture``."""
import os
import re

import pytest

from keras_maskrcnn import builders, run
from keras_maskrcnn.config import Config, apply_overrides
from support import ROOT


@pytest.mark.parametrize("overrides,masks,crowd,keypoints", [
    ([], True, False, 0),
    (["model.mask_head.enabled=false"], False, False, 0),
    (["model.keypoint_head.enabled=true", "model.mask_head.enabled=false"], False, False, 17),
    (["model.architecture=yolact"], True, True, 0),
    (["model.architecture=yolact", "model.mask_head.enabled=false"], True, True, 0),
])
def test_data_requirements_per_architecture(overrides, masks, crowd, keypoints):
    cfg = apply_overrides(Config(), overrides)
    needs = builders.data_requirements(cfg)
    assert (needs.masks, needs.crowd_boxes, needs.num_keypoints) == (masks, crowd, keypoints)
    assert (needs.keypoint_config is None) == (keypoints == 0)
    assert needs.gt_mask_format == cfg.input.gt_mask_format == "full"
    assert run._num_keypoints(cfg) == keypoints


def test_cropped_gt_masks_are_reported():
    cfg = apply_overrides(Config(), ["input.gt_mask_format=cropped"])
    assert builders.data_requirements(cfg).gt_mask_format == "cropped"


ARCHITECTURE_TEST = re.compile(r"\barchitecture\s*(==|!=|\bin\b|\bnot in\b)")


def test_no_architecture_test_outside_builders_and_config():
    package = os.path.join(ROOT, "keras_maskrcnn")
    allowed = {os.path.join(package, "builders.py")}
    found = []
    for directory, _, files in os.walk(package):
        if os.path.relpath(directory, package).split(os.sep)[0] == "config":
            continue
        for name in files:
            path = os.path.join(directory, name)
            if not name.endswith(".py") or path in allowed:
                continue
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if ARCHITECTURE_TEST.search(line):
                        found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_architecture_test_pattern_catches_what_it_should():
    assert ARCHITECTURE_TEST.search('with_crowd=cfg.model.architecture == "yolact"')
    assert ARCHITECTURE_TEST.search("if m.architecture in ('yolact',):")
    assert not ARCHITECTURE_TEST.search('"model.architecture=yolact",')
