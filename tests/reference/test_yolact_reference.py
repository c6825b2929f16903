"""Our YOLACT conversion against the REAL dbolya/yolact (setup.sh's CPU-shimmed copy).

YOLACT-R50 (``yolact_resnet50_config``: 550 x 550, 81 classes, 32 prototypes): seeded random
weights (support.yolact_torch_reference's recipe, calibrated on the first photo so that each
photo yields tens of detections of many classes) are loaded strictly into the real ``Yolact``
and saved with ``torch.save`` as ``yolact_resnet50_54_800000.pth``; the real model loads that
file with its own ``load_weights`` and runs its eval path (eval.py's ``prep_metrics``:
``FastBaseTransform`` on the BGR photo, the network with its ``Detect`` (fast NMS, not cross
class, conf 0.05, top 200, 100 detections), ``postprocess(crop_masks=True,
score_threshold=0)``: integer boxes, masks at the photo's size); our converter CLI (``python
-m keras_maskrcnn.convert yolact``) converts the same file and ``detect`` runs on the RGB photo.
Photos (reference_common.asset_photos: 320 x 320, 213 x 320, 301 x 217) are all resized to
the 550 square, anisotropically.

Bars: >= 99% of the reference's detections matched and >= 99% of ours (same label, box IoU >=
0.98, score within 1e-3), matched mask IoU >= 0.97.
"""
import time

import numpy as np
import pytest

from reference_common import asset_photos, print_row, summarise

pytestmark = pytest.mark.reference


def _real_yolact(torch, path=None):
    from data import cfg, set_cfg
    from yolact import Yolact
    set_cfg("yolact_resnet50_config")
    cfg.mask_proto_debug = False
    net = Yolact()
    if path is not None:
        net.load_weights(str(path))  # the reference's own loader
    net.eval()
    net.detect.use_fast_nms, net.detect.use_cross_class_nms = True, False  # eval.py defaults
    return net


def _seeded_checkpoint(torch, photos, path):
    """The recipe's weights, loaded strictly into the real Yolact, saved as its .pth."""
    from support import yolact_torch_reference as recipe
    first = next(iter(photos.values()))
    model = recipe.randomised(50, 81, 32, recipe.preprocess(first, 550))
    net = _real_yolact(torch)
    net.load_state_dict(model.state_dict(), strict=True)
    torch.save(net.state_dict(), path)


def _run_reference(torch, net, image):
    """eval.py's path on the BGR photo -> numpy detections in original pixels."""
    from layers.output_utils import postprocess
    from utils.augmentations import FastBaseTransform
    from keras_maskrcnn.convert.yolact import COCO_CATEGORY_IDS
    h, w = image.shape[:2]
    frame = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).float()
    with torch.no_grad():
        preds = net(FastBaseTransform()(frame.unsqueeze(0)))
        classes, scores, boxes, masks = postprocess(preds, w, h, crop_masks=True,
                                                    score_threshold=0)
    return {"boxes": boxes.numpy().astype(np.float32), "scores": scores.numpy(),
            "labels": np.asarray(COCO_CATEGORY_IDS)[classes.numpy()],
            "masks": masks.numpy() > 0.5}


def test_against_real_yolact(yolact_root, tmp_path):
    torch = pytest.importorskip("torch")
    from keras_maskrcnn import build_model, load_config
    from keras_maskrcnn.convert.__main__ import main as convert
    photos = asset_photos()
    start = time.perf_counter()
    checkpoint = tmp_path / "yolact_resnet50_54_800000.pth"
    _seeded_checkpoint(torch, photos, checkpoint)
    net = _real_yolact(torch, checkpoint)
    convert(["yolact", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")])
    model = build_model(load_config(str(tmp_path / "out" / "config.yaml")))
    model.load_weights(str(tmp_path / "out" / "model.weights.h5"))
    rows = []
    for photo, image in photos.items():
        reference = _run_reference(torch, net, image)
        ours = model.detect([image])[0]
        rows.append(summarise(f"YOLACT-R50/{photo} {image.shape[0]}x{image.shape[1]}",
                              reference, ours))
    print_row("YOLACT-R50", rows, time.perf_counter() - start)
    for row in rows:
        assert row["reference"] >= 20, row
        assert row["ref_matched"] >= 0.99 and row["ours_matched"] >= 0.99, row
        assert row["min_mask_iou"] >= 0.97, row
