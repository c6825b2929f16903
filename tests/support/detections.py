"""Matching detections of ours against a reference model's, with the parity bars of
tests/integration/test_parity.py (also used by the YOLACT conversion test)."""
import numpy as np

DETECTION_IOU, DETECTION_FRACTION, SCORE_TOL = 0.98, 0.95, 1e-3
MASK_IOU = 0.95


def pairwise_iou(a, b):
    """(n, 4), (m, 4) xyxy -> (n, m) IoU (numpy, float64); two identical empty boxes
    (YOLACT's integer boxes can be) have IoU 1, other empty ones 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    same = np.all(a[:, None] == b[None], axis=-1)  # identical boxes, empty ones included: 1
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(np.float64))


def relative_error(ours, reference):
    """||ours - reference|| / ||reference|| (Frobenius)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-12))


def match_detections(reference, ours):
    """Greedy matching in reference score order: our unused same-label detection of best IoU.

    Returns a list of (reference index, our index or -1, IoU, |score diff|); a pair counts as
    matched when IoU >= DETECTION_IOU and |score diff| <= SCORE_TOL.
    """
    iou = pairwise_iou(reference["boxes"], ours["boxes"])  # (n, m)
    iou = np.where(reference["labels"][:, None] == ours["labels"][None, :], iou, -1.0)
    used = np.zeros(len(ours["boxes"]), bool)
    pairs = []
    for i in np.argsort(-reference["scores"], kind="stable"):
        candidates = np.where(used, -1.0, iou[i])
        j = int(np.argmax(candidates)) if len(candidates) else -1
        if j < 0 or candidates[j] < 0:
            pairs.append((i, -1, 0.0, np.inf))
            continue
        diff = abs(float(reference["scores"][i]) - float(ours["scores"][j]))
        if candidates[j] >= DETECTION_IOU and diff <= SCORE_TOL:
            used[j] = True
        pairs.append((i, j, float(candidates[j]), diff))
    return pairs


def mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
