"""Per-category AP (evaluation.per_category_ap) against pycocotools' own COCOeval summary."""
import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from keras_maskrcnn import evaluation

SIZES = {1: (60, 80), 2: (50, 70)}


def _ann(ann_id, image_id, cat, x, y, w, h):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": 0,
            "bbox": [x, y, w, h], "area": float(w * h),
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _gt():
    """square (1): two boxes; bar (7): one box; blob (3): one box; ghost (9): no GT."""
    images = [{"id": i, "file_name": f"{i}.png", "height": h, "width": w}
              for i, (h, w) in SIZES.items()]
    anns = [_ann(1, 1, 1, 4, 6, 20, 16), _ann(2, 2, 1, 30, 10, 24, 30),
            _ann(3, 1, 7, 40, 20, 30, 20), _ann(4, 2, 3, 5, 5, 20, 20)]
    cats = [{"id": 1, "name": "square"}, {"id": 3, "name": "blob"}, {"id": 7, "name": "bar"},
            {"id": 9, "name": "ghost"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(map(float, box)),
            "score": score}


def _results():
    """square: perfect; bar: one box of IoU 0.72 with its GT (AP 0.5: IoU thresholds 0.5 to
    0.7 pass); blob: nothing detected (AP 0); ghost: a false detection and no GT (AP None)."""
    return [_det(1, 1, [4, 6, 20, 16], 0.9), _det(2, 1, [30, 10, 24, 30], 0.8),
            _det(1, 7, [40, 20, 30 * 0.72, 20], 0.7), _det(2, 9, [1, 1, 10, 10], 0.6)]


def _coco_summary_ap(gt, results, cat_ids):
    coco_gt = evaluation.load_coco_gt(copy.deepcopy(gt))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
    coco_eval.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats[0]


def test_per_category_ap_matches_cocoeval_summaries(capsys):
    gt, results = _gt(), _results()
    metrics = evaluation.run_coco_eval(evaluation.load_coco_gt(copy.deepcopy(gt)), results,
                                       iou_types=("bbox",), verbose=True)
    rows = metrics["per_category"]["bbox"]
    assert [(r["category_id"], r["name"]) for r in rows] == [
        (1, "square"), (3, "blob"), (7, "bar"), (9, "ghost")]
    ap = {r["name"]: r["AP"] for r in rows}
    assert ap["square"] == pytest.approx(1.0) and ap["blob"] == 0.0
    assert ap["bar"] == pytest.approx(0.5) and ap["ghost"] is None
    # Each category's AP is COCOeval's own summary AP on that category alone (-1: no GT).
    for row in rows:
        alone = _coco_summary_ap(gt, results, [row["category_id"]])
        assert (row["AP"] is None and alone == -1) or row["AP"] == pytest.approx(alone)
    # The summary AP is the mean over the categories that have GT.
    assert metrics["bbox"]["AP"] == pytest.approx(np.mean([1.0, 0.0, 0.5]))
    json.dumps(metrics)  # metrics.json-ready (None -> null)
    printed = capsys.readouterr().out
    table = printed[printed.index("Per-category bbox AP"):].splitlines()
    assert table[2].split() == ["1", "square", "1.000"]
    assert table[5].split() == ["9", "ghost", "n/a"]


def test_per_category_ap_mutation_is_seen():
    """Moving square's second box off its GT halves square's AP (and nothing else)."""
    results = _results()
    results[1]["bbox"] = [0, 40, 10, 8]
    metrics = evaluation.run_coco_eval(evaluation.load_coco_gt(_gt()), results,
                                       iou_types=("bbox",), verbose=False)
    ap = {r["name"]: r["AP"] for r in metrics["per_category"]["bbox"]}
    assert ap["square"] == pytest.approx(_coco_summary_ap(_gt(), results, [1]))
    assert 0.4 < ap["square"] < 0.6 and ap["bar"] == pytest.approx(0.5)
