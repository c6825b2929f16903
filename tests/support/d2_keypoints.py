"""A torch oracle of detectron2's keypoint decoding (it cannot be installed here).

Written from the facts of detectron2's ``structures/keypoints.py::heatmaps_to_keypoints``,
``modeling/roi_heads/keypoint_head.py::keypoint_rcnn_inference`` and
``evaluation/coco_evaluation.py::instances_to_coco_json``:
    * each RoI's heatmaps are resized with ``F.interpolate(mode="bicubic",
      align_corners=False)`` to (ceil(h), ceil(w)), h and w the box sides clamped to >= 1;
    * the first maximum of each resized map (row-major) is the keypoint: x = x1 + (j + 0.5) *
      w / ceil(w), same for y;
    * columns: x, y, the resized logit there, and a score = the resized map's exp(v - max)
      at the argmax divided by the sum of exp(low-res logits - max) over the S x S heatmap;
      inference keeps x, y and that score (columns 0, 1, 3);
    * its COCO evaluator subtracts 0.5 from x and y (in original-image pixels).

Used by tests/ops/test_keypoints.py and the detectron2 conversion's parity test; the names
``d2_heatmaps_to_keypoints``, ``d2_keypoint_predictions`` and ``D2_COCO_OFFSET`` are stable.
"""
import numpy as np

D2_COCO_OFFSET = -0.5  # added to x, y of predictions written as COCO results


def d2_heatmaps_to_keypoints(maps, rois):
    """(R, K, S, S) heatmap logits, (R, 4) xyxy boxes -> (R, K, 4) float32 numpy
    [x, y, resized logit, score], one RoI at a time as detectron2."""
    import torch
    import torch.nn.functional as F

    maps = torch.as_tensor(np.asarray(maps, np.float32))
    rois = torch.as_tensor(np.asarray(rois, np.float32))
    num_rois, num_keypoints = maps.shape[:2]
    out = torch.zeros(num_rois, num_keypoints, 4)
    x1, y1 = rois[:, 0], rois[:, 1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_up, heights_up = widths.ceil(), heights.ceil()
    index = torch.arange(num_keypoints)
    for i in range(num_rois):
        size = (int(heights_up[i]), int(widths_up[i]))
        resized = F.interpolate(maps[i:i + 1], size=size, mode="bicubic",
                                align_corners=False)[0]  # (K, h, w)
        flat = resized.reshape(num_keypoints, -1)
        peak = flat.max(dim=1).values[:, None, None]  # (K, 1, 1)
        numerator = torch.exp(resized - peak)  # (K, h, w)
        denominator = torch.exp(maps[i] - peak).sum(dim=(1, 2), keepdim=True)  # (K, 1, 1)
        probabilities = numerator / denominator
        pos = flat.argmax(dim=1)  # first maximum
        col = pos % size[1]
        row = torch.div(pos - col, size[1], rounding_mode="floor")
        out[i, :, 0] = (col.float() + 0.5) * (widths[i] / widths_up[i]) + x1[i]
        out[i, :, 1] = (row.float() + 0.5) * (heights[i] / heights_up[i]) + y1[i]
        out[i, :, 2] = resized[index, row, col]
        out[i, :, 3] = probabilities[index, row, col]
    return out.numpy()


def d2_keypoint_predictions(maps, rois):
    """(R, K, 3) [x, y, score]: the columns detectron2's inference keeps (0, 1, 3)."""
    return d2_heatmaps_to_keypoints(maps, rois)[..., [0, 1, 3]]
