"""The RoI pooler as a part that holds its settings: RoIAlign (Mask R-CNN section 3) on the FPN
level of each RoI (FPN section 4.2, eq. 1), over ``ops.roi_align.multilevel_roi_align``.

One pooler per head (box 7x7, mask 14x14, keypoint 14x14), as detectron2's ``ROIPooler``. The
levels are feature names: ("P2".."P5") for FPN; ("C4",) for the ResNet-C4 model, whose one
level every RoI maps to (pooled as level 4, stride 16): C4 is a choice of pooler, not a branch
in the model.

Conventions: ``ops.roi_align`` (``aligned`` half-pixel shift, ``sampling_ratio`` 0 adaptive,
level mapping "torchvision" / "detectron2"). Level "Pl" / "Cl" has stride 2**l.

Shape shorthand: B batch; R RoIs per image; S output size; C channels.
"""
import keras

from keras_maskrcnn.ops.roi_align import multilevel_roi_align
from keras_maskrcnn.ops.roi_align_gather import multilevel_roi_align_gather

#: ``implementation`` choices: TensorFlow's fast kernels, or gathers only (ONNX / LiteRT).
IMPLEMENTATIONS = {"crop_and_resize": multilevel_roi_align,
                   "gather": multilevel_roi_align_gather}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RoIPooler(keras.layers.Layer):
    """Multi-level RoIAlign to ``output_size`` x ``output_size``.

    Args:
        output_size: S, the pooled side.
        levels: feature names, consecutive levels finest first ("P2".."P5"; C4: ("C4",)).
        canonical_size, canonical_level, level_mapping: the FPN level mapper
            (``ops.roi_align.assign_fpn_levels``).
        sampling_ratio: samples per bin side (0: adaptive); aligned: half-pixel shift.
        implementation: "crop_and_resize" (``ops.roi_align``: TensorFlow's kernels, the
            fast path) or "gather" (``ops.roi_align_gather``: builtin ops of ONNX Runtime
            and LiteRT, fixed sampling only; the exports switch to it while they trace,
            ``export.image_graph.portable``).

    Call:
        features {level: (B, H_l, W_l, C)} holding at least ``levels``; boxes (B, R, 4) xyxy
        in input pixels (R may be 0).
    Returns:
        (B, R, S, S, C) in the features' dtype.
    """

    def __init__(self, output_size, levels=("P2", "P3", "P4", "P5"), canonical_size=224.0,
                 canonical_level=4, level_mapping="torchvision", sampling_ratio=2,
                 aligned=False, implementation="crop_and_resize", **kwargs):
        kwargs.pop("autocast", None)
        # autocast=False: boxes stay float32 under a mixed policy; the features keep theirs
        super().__init__(autocast=False, **kwargs)
        self.output_size = int(output_size)
        self.levels = tuple(str(level) for level in levels)
        numbers = [int(level.lstrip("PC")) for level in self.levels]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise ValueError(f"levels must be consecutive, finest first, got {self.levels}")
        self.min_level, self.max_level = numbers[0], numbers[-1]
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)
        self.level_mapping = str(level_mapping)
        self.sampling_ratio, self.aligned = int(sampling_ratio), bool(aligned)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {sorted(IMPLEMENTATIONS)}, got "
                             f"{implementation!r}")
        self.implementation = implementation
        self.built = True  # no weights: built whether or not it was called

    def call(self, features, boxes):
        # ops.roi_align reads level l as "P{l}" (stride 2**l): C4 is pooled as "P4"
        pooled = {f"P{level}": features[name] for level, name in
                  zip(range(self.min_level, self.max_level + 1), self.levels)}
        return IMPLEMENTATIONS[self.implementation](
            pooled, boxes, self.output_size, sampling_ratio=self.sampling_ratio,
            aligned=self.aligned, min_level=self.min_level, max_level=self.max_level,
            canonical_size=self.canonical_size, canonical_level=self.canonical_level,
            level_mapping=self.level_mapping)

    def compute_output_shape(self, features_shape, boxes_shape):
        channels = features_shape[self.levels[0]][-1]
        return (boxes_shape[0], boxes_shape[1], self.output_size, self.output_size, channels)

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": self.output_size, "levels": list(self.levels),
                       "canonical_size": self.canonical_size,
                       "canonical_level": self.canonical_level,
                       "level_mapping": self.level_mapping,
                       "sampling_ratio": self.sampling_ratio, "aligned": self.aligned,
                       "implementation": self.implementation})
        return config
