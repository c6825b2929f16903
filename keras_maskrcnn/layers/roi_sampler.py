"""RoISampler: training targets of the box head (torchvision ``RoIHeads.select_training_samples``).

Method: the RoI sampling of He et al. 2017 (Mask R-CNN, §3.1 "Training"); the tensor math is
``ops.targets.sample_rois`` (labelling, balanced sampling, box targets), whose docstring pins
the parity conventions. This layer holds the settings and the random state.

Conventions pinned here (tests/layers/test_roi_sampler.py checks each one against torchvision):
    * The call returns ``ops.targets.sample_rois`` for the layer's settings: candidates are the
      valid proposals then the valid GT boxes, matched by IoU, sampled at
      ``positive_fraction``, positives first; box targets for positives only.
    * Randomness is stateless: the seed comes from a ``keras.random.SeedGenerator`` (a
      non-trainable state variable advanced once per call, so every training step differs)
      with the replica id folded in under ``tf.distribute`` (``ops.targets.replica_seed``);
      or from the ``seed`` call argument.
    * No gradient flows into the RoIs or the targets (``stop_gradient``).

Shape shorthand:
    B  batch size
    P  proposals per image (padded; ``proposal_valid`` flags the real ones)
    M  GT boxes per image (padded with -1; a GT row is valid where ``gt_classes > 0``)
    S  sampled RoIs per image (``batch_size_per_image``, static)
"""
import keras

from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops.targets import replica_seed, sample_rois


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RoISampler(keras.layers.Layer):
    """Match proposals (+ GT) to GT and sample ``batch_size_per_image`` RoIs per image.

    Args:
        fg_iou_threshold, bg_iou_threshold: Matcher thresholds (0.5 / 0.5 in torchvision).
        allow_low_quality_matches: Matcher flag (False for the RoI heads).
        batch_size_per_image: S, sampled RoIs per image (512).
        positive_fraction: at most ``int(S * positive_fraction)`` positives (0.25).
        add_gt_as_proposals: append the valid GT boxes to the candidates (True).
        box_weights: (wx, wy, ww, wh) of the box coder (``ROI_BOX_WEIGHTS``, 10, 10, 5, 5).
        seed: int or None, initial state of the layer's ``keras.random.SeedGenerator``; two
            layers with the same seed produce the same sequence of samples. As for every Keras
            SeedGenerator (e.g. Dropout's), the advancing state is a variable of the layer
            but is not written to ``.keras`` / ``.weights.h5`` files: a loaded model starts
            the sequence again from ``seed``.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call args:
        proposals: (B, P, 4) xyxy. proposal_valid: (B, P) bool.
        gt_boxes: (B, M, 4) xyxy. gt_classes: (B, M) int (>= 1 real, -1 / 0 padding).
        seed: optional (2,) int tensor; overrides (and does not advance) the generator.

    Returns:
        dict: rois (B, S, 4), roi_classes (B, S) int32, box_targets (B, S, 4),
        matched_gt (B, S) int32, roi_valid (B, S) bool (see ``ops.targets.sample_rois``).
    """

    def __init__(self, fg_iou_threshold=0.5, bg_iou_threshold=0.5,
                 allow_low_quality_matches=False, batch_size_per_image=512,
                 positive_fraction=0.25, add_gt_as_proposals=True,
                 box_weights=box_ops.ROI_BOX_WEIGHTS, seed=None, **kwargs):
        kwargs.pop("autocast", None)
        # autocast=False: geometry stays float32 under a mixed policy (inputs are cast here).
        super().__init__(autocast=False, **kwargs)
        if bg_iou_threshold > fg_iou_threshold:
            raise ValueError(f"bg_iou_threshold {bg_iou_threshold} > fg_iou_threshold "
                             f"{fg_iou_threshold}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_threshold = float(bg_iou_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.add_gt_as_proposals = bool(add_gt_as_proposals)
        self.box_weights = tuple(float(w) for w in box_weights)
        if len(self.box_weights) != 4:
            raise ValueError(f"box_weights must have 4 entries, got {box_weights}")
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="roi_sampler_seed")
        self.built = True  # its only state, the generator's, exists now

    def call(self, proposals, proposal_valid, gt_boxes, gt_classes, seed=None):
        seed = replica_seed(self.seed_generator.next() if seed is None else seed)
        return sample_rois(
            proposals, proposal_valid, gt_boxes, gt_classes, seed,
            batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction,
            box_weights=self.box_weights,
            fg_iou_threshold=self.fg_iou_threshold,
            bg_iou_threshold=self.bg_iou_threshold,
            allow_low_quality_matches=self.allow_low_quality_matches,
            add_gt_as_proposals=self.add_gt_as_proposals,
        )

    def get_config(self):
        config = super().get_config()
        config.update({
            "fg_iou_threshold": self.fg_iou_threshold,
            "bg_iou_threshold": self.bg_iou_threshold,
            "allow_low_quality_matches": self.allow_low_quality_matches,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction,
            "add_gt_as_proposals": self.add_gt_as_proposals,
            "box_weights": list(self.box_weights),
            "seed": self.seed,
        })
        return config
