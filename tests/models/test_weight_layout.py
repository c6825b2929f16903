"""The weights of a Mask R-CNN keep their names: files saved before the RoI branches load.

``MaskRCNN`` takes its RoI heads as ``models.roi_branch`` branches since commit "models:
MaskRCNN takes RoI branches"; before, it took each pooler, head and predictor as an argument.
Keras names a variable by the layers it was built in (``w.path``) and lays out a
``.weights.h5`` file by the attributes the layers are tracked under, so both would change if
the model kept its parts anywhere else (e.g. inside a branch layer). weight_layout.json holds
both, recorded from commit f7ff392 (the model before the branches) for the tiny FPN model
with every head and the tiny C4 model:

    git archive f7ff392 | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python tests/models/test_weight_layout.py --record

(``keras_maskrcnn`` from that checkout, the tests' configs from this one). The test builds the
same models with today's code and compares: the same variable paths, shapes and order
(``model.weights``, which ``get_weights`` / ``set_weights`` lists follow), and the same
``.weights.h5`` datasets and shapes, so a file saved by the old model (a training run, a
converted model directory) loads unchanged. Nothing here needs the old code at test time.
"""
import json
import os
import sys

import pytest

LAYOUT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weight_layout.json")
VARIANTS = {
    "fpn_mask_keypoint": {"model.accel": "off"},
    "c4_mask": {"model.accel": "off", "model.backbone.variant": "c4",
                "model.backbone.name": "resnet50", "model.backbone.width_multiplier": 0.125,
                "model.keypoint_head.enabled": "false", "model.box_head.pool_size": 14,
                "model.mask_head.num_convs": 0},
}


def weight_layout(model, directory):
    """{"variables": [[path without the model's name, shape], ...] in ``model.weights`` order,
    "weights_h5": sorted [[dataset name, shape], ...] of the model's ``.weights.h5`` file}."""
    import h5py

    prefix = model.name + "/"  # mask_rcnn, mask_rcnn_1, ...: how many models came before
    assert all(w.path.startswith(prefix) for w in model.weights)
    variables = [[w.path[len(prefix):], list(w.shape)] for w in model.weights]
    path = os.path.join(directory, "model.weights.h5")
    model.save_weights(path)
    datasets = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: datasets.append([name, list(obj.shape)])
                     if isinstance(obj, h5py.Dataset) else None)
    return {"variables": variables, "weights_h5": sorted(datasets)}


def build_variant(name):
    from keras_maskrcnn import build_model
    from support.models import tiny_config

    return build_model(tiny_config(**VARIANTS[name]))


@pytest.fixture(scope="module")
def recorded():
    with open(LAYOUT_FILE, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_weight_paths_and_file_layout_are_unchanged(variant, recorded, tmp_path):
    layout = weight_layout(build_variant(variant), str(tmp_path))
    before = recorded[variant]
    assert len(layout["variables"]) == len(before["variables"]) > 50
    assert layout["variables"] == before["variables"]
    assert layout["weights_h5"] == before["weights_h5"]


def test_the_record_covers_every_branch(recorded):
    """The recorded models hold every tracked part (a record of a smaller model would let a
    moved branch pass)."""
    fpn = " ".join(p for p, _ in recorded["fpn_mask_keypoint"]["variables"])
    c4 = " ".join(p for p, _ in recorded["c4_mask"]["variables"])
    for part in ("backbone", "fpn", "rpn_head", "box_head", "box_predictor", "mask_head",
                 "mask_predictor", "keypoint_head", "keypoint_predictor"):
        assert f"{part}/" in fpn, part
    assert "res5_head/" in c4 and "mask_predictor/" in c4 and "box_head/" not in c4
    names = [n for n, _ in recorded["fpn_mask_keypoint"]["weights_h5"]]
    assert any(n.startswith("keypoint_predictor/") for n in names), names[:5]


def _record():
    import tempfile

    layouts = {}
    with tempfile.TemporaryDirectory() as directory:
        for name in sorted(VARIANTS):
            layouts[name] = weight_layout(build_variant(name), directory)
    with open(LAYOUT_FILE, "w", encoding="utf-8") as f:  # one weight a line
        f.write(json.dumps(layouts).replace("], [", "],\n[") + "\n")
    print(f"wrote {LAYOUT_FILE}: " + ", ".join(
        f"{k} {len(v['variables'])} variables" for k, v in layouts.items()))


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
    _record()
