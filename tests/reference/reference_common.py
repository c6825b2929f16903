"""Shared by the reference tests: the photos (the package's assets, shrunk, enlarged and
cropped to odd sizes), matching against the reference and the printed table row."""
import os

import numpy as np

from support.detections import DETECTION_IOU, SCORE_TOL, mask_iou, match_detections

ASSETS = os.path.join(os.path.dirname(__file__), "..", "..", "keras_maskrcnn", "assets")


def asset_photos():
    """(H0, W0, 3) uint8 RGB: astronaut 320 x 320, coffee 213 x 320 and a 301 x 217 crop."""
    from PIL import Image

    def read(name):
        with Image.open(os.path.join(ASSETS, name)) as im:
            return np.asarray(im.convert("RGB"))

    astronaut = read("astronaut.jpg")
    return {"astronaut": astronaut, "coffee": read("coffee.jpg"),
            "astronaut_crop": np.ascontiguousarray(astronaut[10:311, 40:257])}


def summarise(name, reference, ours, keypoint_errors=None):
    """Matched fractions both ways (same label, box IoU >= 0.98, score within 1e-3), mask IoU
    of the matched pairs, keypoint errors (``keypoint_errors(pairs) -> (distances, ties)``)."""
    pairs = [p for p in match_detections(reference, ours)
             if p[1] >= 0 and p[2] >= DETECTION_IOU and p[3] <= SCORE_TOL]
    n, m = len(reference["boxes"]), len(ours["boxes"])
    row = {"photo": name, "reference": n, "ours": m,
           "ref_matched": len(pairs) / max(n, 1), "ours_matched": len(pairs) / max(m, 1)}
    if "masks" in reference:
        ious = [mask_iou(reference["masks"][i], ours["masks"][j]) for i, j, *_ in pairs]
        row["mean_mask_iou"] = float(np.mean(ious)) if ious else 1.0
        row["min_mask_iou"] = float(np.min(ious)) if ious else 1.0
    if keypoint_errors is not None:
        dist, ties = keypoint_errors(pairs)
        row.update(max_keypoint_error=float(dist.max(initial=0.0)),
                   mean_keypoint_error=float(dist.mean()) if dist.size else 0.0,
                   near_ties=ties, keypoints=int(dist.size) + ties)
    print("[reference] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in row.items()))
    return row


def print_row(model, rows, seconds):
    """One table row per model: detections, matched both ways, mask IoU, keypoint error."""
    n = sum(r["reference"] for r in rows)
    m = sum(r["ours"] for r in rows)
    ref = sum(r["ref_matched"] * r["reference"] for r in rows) / max(n, 1)
    our = sum(r["ours_matched"] * r["ours"] for r in rows) / max(m, 1)
    text = f"| {model} | {n} / {m} | {100 * ref:.1f}% | {100 * our:.1f}% |"
    if "mean_mask_iou" in rows[0]:
        text += f" {np.mean([r['mean_mask_iou'] for r in rows]):.4f} |"
    if "max_keypoint_error" in rows[0]:
        text += (f" max {max(r['max_keypoint_error'] for r in rows):.3g} px, mean "
                 f"{np.mean([r['mean_keypoint_error'] for r in rows]):.3g} px, near-ties "
                 f"{sum(r['near_ties'] for r in rows)} of {sum(r['keypoints'] for r in rows)} |")
    print(f"\n[reference table] {text} {seconds:.0f} s |")
