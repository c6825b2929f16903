"""Input preprocessing and the mapping of outputs back to original pixels, for every detector.

Mask R-CNN (He et al. 2017, section 3.1 "Implementation details") resizes images so that the
shorter side is 800 pixels; torchvision's ``GeneralizedRCNNTransform`` (our parity target)
adds a cap on the longer side and pads to a multiple of 32. YOLACT (Bolya et al. 2019,
section 6) resizes to a fixed 550x550 square. One module serves the data pipeline's
evaluation path, ``detect`` (``keras_maskrcnn.inference``) and the SavedModel export.

Conventions pinned here (tests/test_preprocessing.py checks them):
    * Resize policies. ``"shorter_side"`` (torchvision): scale = min(min_size / short side,
      max_size / long side), output side = floor(side * scale), both as torchvision's
      Python floats (float64) compute them, in integer arithmetic (``ops.size_rule``).
      ``"fixed_square"``: output (min_size, min_size) whatever the input
      aspect ratio (max_size equals min_size).
    * Images are resized as float32 pixels, bilinear with half-pixel centres and no
      antialiasing (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``),
      then zero-padded bottom/right to a multiple of ``size_divisor``.
    * ``resize_style="detectron2"`` (shorter_side only; detectron2's test-time
      ``ResizeShortestEdge`` + ``ResizeTransform``): sizes by ``detectron2_output_size`` (float64,
      short side set to min_size, long side scaled, capped at max_size, then int(x + 0.5));
      pixels equal to PIL's ``Image.resize(BILINEAR)`` on uint8, bit for bit
      (``resize_image_detectron2`` = ``ops.pil_resize.resize_bilinear_pil``: Pillow's
      fixed-point taps, horizontal pass then vertical; tests/ops/test_pil_resize.py compares
      with PIL). Boxes map back with the same per-axis ratios, then are clipped to the
      original image (``detector_postprocess``).
    * Normalisation (in the model's graph): (pixel - 255 mean) / (255 std) with mean / std in
      [0, 1] RGB units, and the padding set back to zero after it.
    * Back to original pixels: boxes and keypoints are scaled per axis by original / resized
      (H0 / H, W0 / W), torchvision's ``resize_boxes`` / ``resize_keypoints``: for the square
      policy this is the inverse of its per-axis scale. Masks are pasted into the original
      image with ``ops.masks.paste_masks`` (torchvision's 1-pixel expansion), on > threshold,
      or with ``paste="detectron2"`` by ``ops.masks.paste_masks_detectron2``, on >= threshold.
    * Image-sized masks (YOLACT, ``mask_type == "image"``: (D, Hp, Wp) probabilities at
      prototype resolution, already cropped): resized bilinearly (half-pixel, no antialias)
      to the original (H0, W0), which also undoes the square resize, then > threshold
      (``ops.masks_to_image``). Their boxes follow the reference's ``postprocess``: x1 =
      max(min(x1, x2), 0), x2 = min(max(x1, x2), W0) (likewise y), then truncated toward zero
      to integers (``boxes.long()``), kept as float32 (``integer_boxes``).

Shape shorthand: B images; H0, W0 original size; H, W resized; Hp, Wp padded;
D detections per image; S RoI mask size; Kp keypoints; Hm, Wm largest (H0, W0) of a batch.
"""
import dataclasses
from typing import Tuple

import tensorflow as tf

from keras_maskrcnn.ops.bilinear_resize import resize_bilinear_gather
from keras_maskrcnn.ops.masks import paste_and_threshold
from keras_maskrcnn.ops.pil_resize import resize_bilinear_pil
from keras_maskrcnn.ops.prototype_masks import masks_to_image
from keras_maskrcnn.ops.size_rule import floor_times_ratio, shorter_side_ratio

RESIZE_POLICIES = ("shorter_side", "fixed_square")
RESIZE_STYLES = ("torchvision", "detectron2")  # shorter_side's size rounding and pixels


def shorter_side_output_size(height, width, min_size, max_size):
    """torchvision's resized size (new_height, new_width) () int32: floor(side * scale) with
    scale = min(min_size / min(H, W), max_size / max(H, W)), as torchvision's Python (float64)
    floats compute it, in integer arithmetic (``ops.size_rule``: the same graph runs in
    LiteRT, which has no float64). Integer sizes only."""
    a, d = shorter_side_ratio(height, width, min_size, max_size)
    return floor_times_ratio(height, a, d), floor_times_ratio(width, a, d)


def shorter_side_size(height, width, min_size, max_size):
    """torchvision's resize rule.

    Args:
        height, width: () int input size (Python ints or tensors).
        min_size: () target short side; max_size: () cap on the long side (integers).

    Returns:
        (new_height, new_width) () int32 (``shorter_side_output_size``) and scale () float32
        = min(min_size / min(H, W), max_size / max(H, W)) (float64, then rounded).
    """
    new_h, new_w = shorter_side_output_size(height, width, min_size, max_size)
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    scale = tf.minimum(tf.cast(min_size, tf.float64) / tf.minimum(h, w),
                       tf.cast(max_size, tf.float64) / tf.maximum(h, w))
    return new_h, new_w, tf.cast(scale, tf.float32)


def detectron2_output_size(height, width, min_size, max_size):
    """detectron2's ``ResizeShortestEdge`` size rule, float64 as its Python floats.

    Args:
        height, width: () int input size (Python ints or tensors).
        min_size: () target short side; max_size: () cap on the long side.

    Returns:
        (new_height, new_width) () int32: the short side becomes min_size and the long side
        side * min_size / short; if the long side then exceeds max_size both are multiplied by
        max_size / long; each is rounded as int(x + 0.5).
    """
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    size = tf.cast(min_size, tf.float64)
    scale = size / tf.minimum(h, w)
    new_h = tf.where(h < w, size, scale * h)
    new_w = tf.where(h < w, scale * w, size)
    longest = tf.maximum(new_h, new_w)
    cap = tf.where(longest > tf.cast(max_size, tf.float64),
                   tf.cast(max_size, tf.float64) / longest, 1.0)
    new_h = tf.where(cap < 1.0, new_h * cap, new_h)  # unchanged when not capped
    new_w = tf.where(cap < 1.0, new_w * cap, new_w)
    return (tf.cast(tf.floor(new_h + 0.5), tf.int32), tf.cast(tf.floor(new_w + 0.5), tf.int32))


def resize_image_detectron2(image, size):
    """(..., H, W, C) uint8-valued image(s) -> (..., h, w, C) float32 uint8 values, equal to
    PIL's ``Image.resize((w, h), BILINEAR)`` (``ops.pil_resize.resize_bilinear_pil``)."""
    return tf.cast(resize_bilinear_pil(image, size), tf.float32)


def resize_image(image, size):
    """(..., H, W, C) image(s) -> (..., h, w, C) float32, bilinear, half-pixel, no antialias."""
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear",
                           antialias=False)


def padded_size(height, width, size_divisor):
    """(height, width) rounded up to multiples of ``size_divisor`` (int32 tensors)."""
    d = tf.constant(size_divisor, tf.int32)
    return (height + d - 1) // d * d, (width + d - 1) // d * d


def to_original_pixels(outputs, image_sizes, original_sizes, clip=False):
    """Boxes and keypoints of model outputs in original-image pixels (other keys unchanged).

    Args:
        outputs: dict with boxes (B, D, 4) xyxy and optionally keypoints (B, D, Kp, 3)
            [x, y, score], in resized-input pixels.
        image_sizes: (B, 2) int resized (H, W); original_sizes: (B, 2) int (H0, W0).
        clip: also clip the boxes to [0, W0] x [0, H0] (detectron2's ``detector_postprocess``).

    Returns:
        A new dict: boxes and keypoints scaled per axis by H0 / H and W0 / W (float32).
    """
    ratio = tf.cast(original_sizes, tf.float32) / tf.cast(image_sizes, tf.float32)  # (B, 2)
    rh, rw = ratio[:, 0, None, None], ratio[:, 1, None, None]  # each (B, 1, 1)
    result = dict(outputs)
    result["boxes"] = outputs["boxes"] * tf.concat([rw, rh, rw, rh], axis=-1)  # (B, D, 4)
    if clip:
        size = tf.cast(original_sizes, tf.float32)
        upper = tf.stack([size[:, 1], size[:, 0], size[:, 1], size[:, 0]], -1)[:, None]
        result["boxes"] = tf.clip_by_value(result["boxes"], 0.0, upper)  # (B, 1, 4) bounds
    if "keypoints" in outputs:
        scale = tf.concat([rw, rh, tf.ones_like(rw)], axis=-1)[:, :, None]  # (B, 1, 1, 3)
        result["keypoints"] = outputs["keypoints"] * scale
    return result


def full_image_masks(masks, boxes, original_sizes, threshold, num_detections=None,
                     paste="torchvision"):
    """RoI mask probabilities -> bool masks pasted on a common (Hm, Wm) canvas.

    Args:
        masks: (B, D, S, S) float32 probabilities; boxes: (B, D, 4) xyxy original pixels.
        original_sizes: (B, 2) int32 (H0, W0) per image.
        threshold: a pixel is on when its pasted probability is > threshold ("torchvision"),
            >= threshold ("detectron2").
        num_detections: (B,) int32 or None (every row is a detection).
        paste: "torchvision" (``ops.masks.paste_masks``) or "detectron2"
            (``ops.masks.paste_masks_detectron2``).

    Returns:
        (B, D, Hm, Wm) bool, Hm, Wm = max over the batch; image b's masks lie on
        [:H0_b, :W0_b] and are False elsewhere and on rows past ``num_detections``.
    """
    sizes = tf.concat([original_sizes, tf.zeros([1, 2], original_sizes.dtype)], 0)  # B may be 0
    height, width = tf.unstack(tf.reduce_max(sizes, axis=0))  # scalars Hm, Wm
    pasted = paste_and_threshold(masks, boxes, height, width, threshold, paste)  # (B, D, Hm, Wm)
    rows = tf.range(height)[None, :] < original_sizes[:, 0, None]  # (B, Hm)
    cols = tf.range(width)[None, :] < original_sizes[:, 1, None]  # (B, Wm)
    inside = tf.logical_and(rows[:, :, None], cols[:, None, :])  # (B, Hm, Wm)
    on = tf.logical_and(pasted, inside[:, None])  # (B, D, Hm, Wm)
    if num_detections is not None:
        valid = tf.range(tf.shape(masks)[1])[None] < num_detections[:, None]  # (B, D)
        on = tf.logical_and(on, valid[:, :, None, None])
    return on


def integer_boxes(boxes, original_sizes):
    """YOLACT's box postprocess: ordered corners, clamped on the outer side, truncated.

    Args:
        boxes: (B, D, 4) xyxy in original pixels (float). original_sizes: (B, 2) (H0, W0).

    Returns:
        (B, D, 4) float32 integer-valued: x1 = trunc(max(min(x1, x2), 0)), x2 =
        trunc(min(max(x1, x2), W0)), likewise y with H0.
    """
    size = tf.cast(original_sizes, tf.float32)
    h0, w0 = size[:, 0, None], size[:, 1, None]  # (B, 1) each
    xa, ya, xb, yb = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)  # (B, D) each
    x1, y1 = tf.maximum(tf.minimum(xa, xb), 0.0), tf.maximum(tf.minimum(ya, yb), 0.0)
    x2, y2 = tf.minimum(tf.maximum(xa, xb), w0), tf.minimum(tf.maximum(ya, yb), h0)
    sanitized = tf.stack([x1, y1, x2, y2], axis=-1)  # (B, D, 4)
    return tf.cast(tf.cast(sanitized, tf.int64), tf.float32)  # truncation toward zero


def full_image_masks_from_image_masks(masks, original_sizes, threshold, num_detections=None):
    """Image-sized (prototype-resolution) mask probabilities -> bool masks on a common canvas.

    Args:
        masks: (B, D, Hp, Wp) float32 probabilities covering the whole (resized) image.
        original_sizes: (B, 2) int32 (H0, W0). threshold: on when the resized value is >.
        num_detections: (B,) int32 or None (every row is a detection).

    Returns:
        (B, D, Hm, Wm) bool: image b's masks resized to (H0_b, W0_b) at [:H0_b, :W0_b], False
        elsewhere and on rows past ``num_detections``.
    """
    original_sizes = tf.cast(original_sizes, tf.int32)
    sizes = tf.concat([original_sizes, tf.zeros([1, 2], tf.int32)], 0)  # B may be 0
    height, width = tf.unstack(tf.reduce_max(sizes, axis=0))  # scalars Hm, Wm

    def one_image(args):
        image_masks, size = args  # (D, Hp, Wp), (2,)
        on = masks_to_image(image_masks, size, threshold)  # (D, H0, W0)
        return tf.pad(on, [[0, 0], [0, height - size[0]], [0, width - size[1]]])

    on = tf.cond(  # map_fn cannot stack zero elements of an unknown shape: B = 0 apart
        tf.shape(masks)[0] > 0,
        lambda: tf.map_fn(one_image, (masks, original_sizes),
                          fn_output_signature=tf.TensorSpec([None, None, None], tf.bool)),
        lambda: tf.zeros(tf.stack([0, tf.shape(masks)[1], height, width]), tf.bool))
    if num_detections is not None:
        valid = tf.range(tf.shape(masks)[1])[None] < num_detections[:, None]  # (B, D)
        on = tf.logical_and(on, valid[:, :, None, None])
    return on


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """Resize policy, padding and normalisation of a detector's input (primitive fields).

    Build one with ``Preprocessor.shorter_side(...)`` or ``Preprocessor.fixed_square(...)``.
    ``preprocessor(images)`` makes the model inputs of same-size uint8 images;
    ``normalize`` runs inside the model; ``to_original_pixels`` / ``full_image_masks`` (module
    functions) map the outputs back.
    """
    policy: str = "shorter_side"
    min_size: int = 800  # shorter_side: target short side; fixed_square: the square's side
    max_size: int = 1333  # shorter_side: cap on the long side; fixed_square: = min_size
    size_divisor: int = 32
    pixel_mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB in [0, 1]
    pixel_std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize_style: str = "torchvision"  # shorter_side: "torchvision" or "detectron2"

    def __post_init__(self):
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got "
                             f"{self.policy!r}")
        if self.policy == "fixed_square" and self.min_size != self.max_size:
            raise ValueError(f"fixed_square needs min_size == max_size (the side), got "
                             f"{self.min_size} and {self.max_size}")
        if self.resize_style not in RESIZE_STYLES:
            raise ValueError(f"resize_style must be one of {RESIZE_STYLES}, got "
                             f"{self.resize_style!r}")

    @property
    def detectron2_style(self):
        """Whether sizes, pixels and the mapping back follow detectron2 (shorter_side)."""
        return self.policy == "shorter_side" and self.resize_style == "detectron2"

    @classmethod
    def shorter_side(cls, min_size, max_size, size_divisor=32, resize_style="torchvision",
                     **normalisation):
        """torchvision's policy: short side ``min_size``, long side at most ``max_size``
        (``resize_style`` "detectron2": its rounding and PIL-like pixels)."""
        return cls("shorter_side", int(min_size), int(max_size), int(size_divisor),
                   resize_style=resize_style, **normalisation)

    @classmethod
    def fixed_square(cls, size, size_divisor=1, **normalisation):
        """YOLACT's policy: every image becomes size x size (aspect ratio not kept)."""
        return cls("fixed_square", int(size), int(size), int(size_divisor), **normalisation)

    def output_size(self, height, width):
        """Resized (H, W) () int32 of an (height, width) image under the policy."""
        if self.policy == "fixed_square":
            side = tf.constant(self.min_size, tf.int32)
            return side, side
        if self.detectron2_style:
            return detectron2_output_size(height, width, self.min_size, self.max_size)
        return shorter_side_output_size(height, width, self.min_size, self.max_size)

    def __call__(self, images, portable=False):
        """Same-size images -> model inputs.

        Args:
            images: (B, H0, W0, 3) uint8 (or any real dtype) RGB.
            portable: resize by gathers (``ops.bilinear_resize``: TensorFlow's sample
                coordinates in ONNX Runtime too) instead of ``tf.image.resize``.

        Returns:
            images (B, Hp, Wp, 3) float32 in [0, 255] (zero padding), image_sizes (B, 2) int32
            resized (H, W).
        """
        shape = tf.shape(images)
        new_h, new_w = self.output_size(shape[1], shape[2])
        if self.detectron2_style:
            resize = resize_image_detectron2
        else:
            resize = resize_bilinear_gather if portable else resize_image
        resized = resize(images, tf.stack([new_h, new_w]))  # (B, H, W, 3)
        pad_h, pad_w = padded_size(new_h, new_w, self.size_divisor)
        padded = tf.pad(resized, [[0, 0], [0, pad_h - new_h], [0, pad_w - new_w], [0, 0]])
        image_sizes = tf.tile(tf.stack([new_h, new_w])[None], [shape[0], 1])  # (B, 2)
        return padded, image_sizes

    def normalize(self, images, image_sizes):
        """(B, Hp, Wp, 3) pixels in [0, 255] -> normalised float32, zero on the padding."""
        mean = tf.constant(self.pixel_mean, tf.float32) * 255.0
        std = tf.constant(self.pixel_std, tf.float32) * 255.0
        x = (tf.cast(images, tf.float32) - mean) / std
        shape = tf.shape(x)
        rows = tf.range(shape[1])[None, :, None] < image_sizes[:, 0, None, None]  # (B, Hp, 1)
        cols = tf.range(shape[2])[None, None, :] < image_sizes[:, 1, None, None]  # (B, 1, Wp)
        inside = tf.cast(tf.logical_and(rows, cols), x.dtype)  # (B, Hp, Wp)
        return x * tf.expand_dims(inside, -1)  # ExpandDims: LiteRT has no new-axis slice
