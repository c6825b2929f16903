"""detectron2's mask pasting restated in torch (the oracle of ``ops.masks.paste_masks_detectron2``
and of the detectron2 conversion parity test).

Facts from detectron2/layers/mask_ops.py (``_do_paste_mask``, ``paste_masks_in_image``):
each S x S probability map is sampled with ``F.grid_sample(align_corners=False)`` (bilinear,
zero padding) at the image pixel centres (x + 0.5, y + 0.5), normalised to [-1, 1] over the
float box (no padding, no rounding of the box); on the CPU each mask is only computed on the
pixels from floor(min x1) - 1 to ceil(max x2) + 1 (likewise y) and is zero elsewhere
(``skip_empty``), on the GPU over the whole image; binary masks are ``probability >=
threshold``.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


def d2_do_paste_mask(masks, boxes, img_h, img_w, skip_empty=False):
    """Pasted probabilities (N, img_h, img_w) float32 of masks (N, S, S) in boxes (N, 4).

    ``skip_empty``: detectron2's CPU path (zero outside the region around the boxes);
    otherwise its GPU path (every pixel sampled).
    """
    masks = torch.from_numpy(np.array(masks, np.float32))
    boxes = torch.from_numpy(np.array(boxes, np.float32))
    n = masks.shape[0]
    top, left, bottom, right = 0, 0, img_h, img_w
    if skip_empty:
        left = max(int(math.floor(boxes[:, 0].min().item())) - 1, 0)
        top = max(int(math.floor(boxes[:, 1].min().item())) - 1, 0)
        right = min(int(math.ceil(boxes[:, 2].max().item())) + 1, img_w)
        bottom = min(int(math.ceil(boxes[:, 3].max().item())) + 1, img_h)
        if right <= left or bottom <= top:  # boxes off the image (torch.arange would raise;
            return np.zeros((n, img_h, img_w), np.float32)  # detectron2's are clipped first)
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]  # (N, 1) each
    ys = torch.arange(top, bottom, dtype=torch.float32) + 0.5
    xs = torch.arange(left, right, dtype=torch.float32) + 0.5
    ys = (ys - y0) / (y1 - y0) * 2 - 1  # (N, h) in [-1, 1] inside the box
    xs = (xs - x0) / (x1 - x0) * 2 - 1  # (N, w)
    grid = torch.stack([xs[:, None, :].expand(n, ys.shape[1], xs.shape[1]),
                        ys[:, :, None].expand(n, ys.shape[1], xs.shape[1])], dim=3)
    sampled = F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]  # (N, h, w)
    out = torch.zeros((n, img_h, img_w), dtype=torch.float32)
    out[:, top:bottom, left:right] = sampled
    return out.numpy()


def d2_paste_masks_in_image(masks, boxes, image_shape, threshold=0.5):
    """detectron2's ``paste_masks_in_image`` on the CPU: (N, H, W) bool, each mask pasted on
    its own (skip_empty) and on where its probability is >= threshold."""
    img_h, img_w = image_shape
    masks, boxes = np.asarray(masks, np.float32), np.asarray(boxes, np.float32)
    out = np.zeros((len(masks), img_h, img_w), bool)
    for i in range(len(masks)):
        out[i] = d2_do_paste_mask(masks[i:i + 1], boxes[i:i + 1], img_h, img_w,
                                  skip_empty=True)[0] >= threshold
    return out
