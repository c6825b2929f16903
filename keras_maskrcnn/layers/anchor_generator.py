"""Anchor generators as parts that hold their settings: Faster R-CNN / FPN anchors (Ren et al.
2015, section 3.1.1; Lin et al. 2017, section 4.1) and YOLACT's priors (Bolya et al. 2019,
section 3.3), over ``ops.anchors``.

A detector calls its generator with the input images and the feature maps of the levels it
predicts on; the generator returns the anchors of every level, concatenated in the order the
dense head concatenates its outputs. The settings (sizes per level, ratios, rounding, strides;
YOLACT's scales and square variant) live here, not in the model, so a ResNet-C4 model is a
one-level generator with every size on that level (``AnchorGenerator(levels=("C4",),
sizes=((32, 64, 128, 256, 512),))``), not a branch in the model.

Conventions: ``ops.anchors`` (aspect ratio h / w, centre offset 0, ratio-major cell order for
``AnchorGenerator``; w / h, centre offset 0.5 for ``YOLACTAnchorGenerator``). The anchors
depend only on the (padded) input size and the feature sizes: no batch dim, float32 whatever
the dtype policy, no weights.

Shape shorthand: B batch; H, W padded input size; H_l, W_l level l; A anchors per location;
N = sum_l H_l * W_l * A anchors.
"""
import keras
import tensorflow as tf

from keras_maskrcnn.ops.anchors import feature_keys, multilevel_anchors, yolact_anchors


def _level_number(name):
    """"P3" -> 3, "C4" -> 4: the level of a feature name (stride 2**level)."""
    return int(str(name).lstrip("PC"))


def _feature_sizes(features, names):
    return [(tf.shape(features[k])[1], tf.shape(features[k])[2]) for k in names]


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class AnchorGenerator(keras.layers.Layer):
    """Faster R-CNN / FPN anchors on named feature levels (torchvision's and detectron2's).

    Args:
        levels: feature names, finest first ("P2".."P6"; C4: ("C4",)); the model takes these
            levels of its features, in this order.
        sizes: one sequence of anchor sizes (sqrt of the area, pixels) per level: ((32,),
            (64,), ...) for FPN, ((32, 64, 128, 256, 512),) for C4.
        aspect_ratios: h / w, every level.
        rounded: torchvision's rounded cell anchors (False: detectron2's unrounded).
        nominal_strides: level "Pl" / "Cl" has stride 2**l (detectron2) instead of the padded
            input size // feature size per axis (torchvision).

    Call:
        images (B, H, W, C) (only the shape is read); features {level: (B, H_l, W_l, C)}
        holding at least ``levels``.
    Returns:
        (N, 4) float32 xyxy anchors in input pixels, ``levels`` order, then row-major
        locations, then the A = len(sizes[l]) * len(aspect_ratios) cell anchors.
    """

    def __init__(self, levels=("P2", "P3", "P4", "P5", "P6"),
                 sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=(0.5, 1.0, 2.0),
                 rounded=True, nominal_strides=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)  # only shapes are read: no input casts
        self.levels = tuple(str(level) for level in levels)
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        if len(self.sizes) != len(self.levels) or not all(self.sizes):
            raise ValueError(f"sizes needs one non-empty sequence per level {self.levels}, got "
                             f"{sizes!r}")
        if len({len(s) for s in self.sizes}) != 1:
            raise ValueError(f"every level needs the same number of sizes (one dense head), "
                             f"got {sizes!r}")
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.rounded, self.nominal_strides = bool(rounded), bool(nominal_strides)
        self.built = True  # no weights: built whether or not it was called

    @property
    def num_anchors(self):
        """A, anchors per location (the dense head's)."""
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def call(self, images, features):
        shape = tf.shape(images)
        strides = ([2 ** _level_number(name) for name in self.levels]
                   if self.nominal_strides else None)
        per_level = multilevel_anchors(
            shape[1], shape[2], _feature_sizes(features, self.levels), sizes=self.sizes,
            aspect_ratios=self.aspect_ratios, rounded=self.rounded, strides=strides)
        return tf.concat(per_level, axis=0)  # (N, 4)

    def compute_output_shape(self, images_shape, features_shape=None):
        return (None, 4)

    def get_config(self):
        config = super().get_config()
        config.update({"levels": list(self.levels), "sizes": [list(s) for s in self.sizes],
                       "aspect_ratios": list(self.aspect_ratios), "rounded": self.rounded,
                       "nominal_strides": self.nominal_strides})
        return config


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class YOLACTAnchorGenerator(keras.layers.Layer):
    """YOLACT's priors (``ops.anchors.yolact_anchors``) on every level of the features.

    Args:
        scales: one anchor side per level (pixels of a ``reference_size`` input, scaled by
            the input size / reference_size).
        aspect_ratios: w / h, every level.
        square: the released v1 weights' square anchors (side s * sqrt(r)).
        reference_size: the input size the scales are given for (550).

    Call:
        images (B, H, W, C) (only the shape is read); features {level: (B, H_l, W_l, C)}, its
        levels taken in ``ops.anchors.feature_keys`` order (the prediction head's).
    Returns:
        (N, 4) float32 xyxy anchors in input pixels.
    """

    def __init__(self, scales=(24.0, 48.0, 96.0, 192.0, 384.0), aspect_ratios=(1.0, 0.5, 2.0),
                 square=True, reference_size=550, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)  # only shapes are read: no input casts
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.square, self.reference_size = bool(square), int(reference_size)
        self.built = True  # no weights: built whether or not it was called

    @property
    def num_anchors(self):
        """A, anchors per location."""
        return len(self.aspect_ratios)

    def call(self, images, features):
        shape = tf.shape(images)
        return yolact_anchors((shape[1], shape[2]),
                              _feature_sizes(features, feature_keys(features)),
                              scales=self.scales, aspect_ratios=self.aspect_ratios,
                              square=self.square, reference_size=self.reference_size)

    def compute_output_shape(self, images_shape, features_shape=None):
        return (None, 4)

    def get_config(self):
        config = super().get_config()
        config.update({"scales": list(self.scales), "aspect_ratios": list(self.aspect_ratios),
                       "square": self.square, "reference_size": self.reference_size})
        return config
