"""RoIAlign's bin geometry (Mask R-CNN section 3, "RoIAlign"), shared by the fixed-grid
(``ops.roi_align``) and the adaptive (``ops.roi_align_adaptive``) samplers.

Conventions pinned here (tests/ops/test_roi_align*.py check them against torchvision):
    * ``output_size`` is an int or a (P, Q) pair of positive ints.
    * Along one axis, with box edges already in feature pixels, roi_start = start - offset and
      roi_size = (end - offset) - roi_start, offset 0.5 when ``aligned`` (detectron2's
      ROIAlignV2); otherwise roi_size is clamped to >= 1 (torchvision's legacy rule).

Shape shorthand: K RoIs; P, Q output height and width.
"""
import tensorflow as tf


def output_pair(output_size):
    """``int`` or ``(P, Q)`` -> ``(P, Q)`` Python ints, validated."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    out_h, out_w = (int(s) for s in output_size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output_size must be positive, got {output_size}")
    return out_h, out_w


def roi_extent(start, end, aligned):
    """torchvision's RoI extent along one axis, (K,) box edges in feature pixels ->
    (roi_start, roi_size): ``aligned`` shifts by half a pixel; otherwise the size is at least
    one pixel (torchvision's legacy rule)."""
    offset = 0.5 if aligned else 0.0
    roi_start = start - offset
    roi_size = (end - offset) - roi_start
    if not aligned:
        roi_size = tf.maximum(roi_size, 1.0)
    return roi_start, roi_size
