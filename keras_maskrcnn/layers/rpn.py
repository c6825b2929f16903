"""Region Proposal Network layers: the RPN head and the proposal generator (torchvision's RPN).

Method: Ren et al. 2015 (Faster R-CNN, §3.1) on every FPN level (Lin et al. 2017, FPN, §4.1).
The tensor math is in ``ops.proposals`` (top-k, decode, clip, NMS), ``ops.targets`` (anchor
labels, sampling, box targets) and ``ops.anchors`` (level order); these layers hold the
weights and the settings.

Conventions pinned here (tests/layers/test_rpn.py checks each against
``torchvision.models.detection.rpn``):
    * Anchor order (``RPNHead``, a ``layers.dense_head.DenseHead``): levels in
      ``ops.anchors.feature_keys`` order, the keys of the feature dict sorted naturally ("P2" < "P3" < ... < "P10"), the order of ``anchors.multilevel_anchors`` for
      P2..P6. Within a level the order is torchvision's: location row-major (y, then x), anchor
      minor, i.e. index (i * W + j) * A + a; box delta channel a * 4 + c (torchvision's
      ``view(B, A, 4, H, W)``).
    * ``ProposalGenerator`` is ``ops.proposals.generate_proposals`` with the train / test
      top-n picked by ``training``; see that module for the proposal conventions. It also
      holds the RPN's training-target settings (``targets``: ``ops.targets.rpn_targets``,
      the anchor matcher and balanced sampler of torchvision's ``RegionProposalNetwork``),
      which encode with the same ``box_weights`` as the proposals decode.

Shape shorthand:
    B  batch size
    N  anchors per image, all levels concatenated (N = sum_l H_l * W_l * A)
    A  anchors per location
    L  pyramid levels ("P2".."P6" -> L = 5)
    P  proposals per image (post_nms_top_n, static)
"""
import keras

from keras_maskrcnn.layers.dense_head import DenseHead
from keras_maskrcnn.ops import boxes as box_ops
from keras_maskrcnn.ops import nms as nms_ops
from keras_maskrcnn.ops.proposals import generate_proposals
from keras_maskrcnn.ops.targets import replica_seed, rpn_targets


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RPNHead(DenseHead):
    """torchvision's ``RPNHead``: the ``DenseHead`` with num_convs x (3x3 conv + ReLU) and 1x1
    predictors of 1 objectness logit and 4 box deltas per anchor, shared over levels.

    Args:
        num_anchors: A, anchors per location (3 for one size and ratios 0.5, 1, 2).
        num_convs: number of 3x3 conv + ReLU layers (torchvision's ``conv_depth``), each with
            as many output channels as the features have.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        features: dict level -> (B, H_l, W_l, C); every level has the same C.
    Returns:
        objectness_logits: (B, N) float32; box_deltas: (B, N, 4) float32 (dx, dy, dw, dh),
        levels concatenated in ``ops.anchors.feature_keys`` order (see ``layers.dense_head``).

    Sub-layers: ``convs[i]`` (torchvision ``conv.{i}.0``), ``predictors["objectness"]``
    (``cls_logits``), ``predictors["box_deltas"]`` (``bbox_pred``). Initialisation as
    torchvision: normal with std 0.01, zero biases.
    """

    def __init__(self, num_anchors, num_convs=1, **kwargs):
        super().__init__(num_anchors, {"objectness": 1, "box_deltas": 4}, num_convs=num_convs,
                         predictor_kernel_size=1, squeeze_outputs=("objectness",),
                         kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                         bias_initializer="zeros", **kwargs)

    def call(self, features):
        outputs = super().call(features)
        return outputs["objectness"], outputs["box_deltas"]

    def compute_output_shape(self, input_shape):
        shapes = super().compute_output_shape(input_shape)
        return shapes["objectness"], shapes["box_deltas"]

    def get_config(self):
        config = keras.layers.Layer.get_config(self)  # the RPN fixes DenseHead's other arguments
        config.update({"num_anchors": self.num_anchors, "num_convs": self.num_convs})
        return config


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class ProposalGenerator(keras.layers.Layer):
    """Decode, clip, filter and NMS the RPN outputs into a static number of proposals.

    Thin wrapper over ``ops.proposals.generate_proposals`` that picks the train/test top-n by
    ``training``.
    Runs in float32 whatever the global dtype policy (geometry stays float32).

    Args:
        pre_nms_top_n_train, pre_nms_top_n_test: top logits kept per level and image.
        post_nms_top_n_train, post_nms_top_n_test: P, proposals per image after NMS.
        nms_threshold, min_size, score_threshold, box_weights, scale_clip, nms_method,
            proposal_filter: see ``ops.proposals.generate_proposals``.
        fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches, batch_size_per_image,
            positive_fraction: the training targets' anchor labelling and sampling
            (``targets``; ``ops.targets.rpn_targets``).
        seed: int or None, initial state of the targets' ``keras.random.SeedGenerator``.

    Call:
        objectness_logits (B, N), box_deltas (B, N, 4), anchors (N, 4), level_counts (list of
        L Python ints or int tensors), image_sizes (B, 2) int (height, width), training
        (Python bool). All may be passed positionally (the layer lets Keras accept the
        Python-int counts).
    Returns:
        dict proposals (B, P, 4), scores (B, P), valid (B, P) bool; P = post_nms_top_n of the
        mode.
    """

    def __init__(self, pre_nms_top_n_train=2000, pre_nms_top_n_test=1000,
                 post_nms_top_n_train=2000, post_nms_top_n_test=1000, nms_threshold=0.7,
                 min_size=1e-3, score_threshold=0.0, box_weights=box_ops.RPN_BOX_WEIGHTS,
                 scale_clip=box_ops.DEFAULT_DELTA_CLIP, nms_method="offset",
                 proposal_filter="torchvision", fg_iou_threshold=0.7, bg_iou_threshold=0.3,
                 allow_low_quality_matches=True, batch_size_per_image=256,
                 positive_fraction=0.5, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self._allow_non_tensor_positional_args = True  # level_counts: a list of Python ints
        if nms_method not in nms_ops.METHODS:
            raise ValueError(f"nms_method must be one of {nms_ops.METHODS}, got {nms_method!r}")
        self.pre_nms_top_n_train = int(pre_nms_top_n_train)
        self.pre_nms_top_n_test = int(pre_nms_top_n_test)
        self.post_nms_top_n_train = int(post_nms_top_n_train)
        self.post_nms_top_n_test = int(post_nms_top_n_test)
        self.nms_threshold = float(nms_threshold)
        self.min_size = float(min_size)
        self.score_threshold = float(score_threshold)
        self.box_weights = tuple(float(w) for w in box_weights)
        self.scale_clip = float(scale_clip)
        self.nms_method = nms_method
        self.proposal_filter = str(proposal_filter)
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_threshold = float(bg_iou_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="rpn_seed")
        self.built = True  # its only state, the generator's, exists now

    def targets(self, anchors, gt_boxes, gt_valid):
        """RPN training targets, sampled with the next seed (replicas draw independently).

        Args:
            anchors (N, 4); gt_boxes (B, M, 4); gt_valid (B, M) bool.
        Returns:
            labels (B, N) int32 (1 positive, 0 negative, -1 not sampled), box_targets
            (B, N, 4) float32 (``ops.targets.rpn_targets``).
        """
        return rpn_targets(
            anchors, gt_boxes, gt_valid, fg_iou_threshold=self.fg_iou_threshold,
            bg_iou_threshold=self.bg_iou_threshold,
            allow_low_quality_matches=self.allow_low_quality_matches,
            batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction, box_weights=self.box_weights,
            seed=replica_seed(self.seed_generator.next()))

    def call(self, objectness_logits, box_deltas, anchors, level_counts, image_sizes,
             training=False):
        training = bool(training)  # Python bool: the output size P depends on it
        return generate_proposals(
            objectness_logits, box_deltas, anchors, level_counts, image_sizes,
            pre_nms_top_n=self.pre_nms_top_n_train if training else self.pre_nms_top_n_test,
            post_nms_top_n=self.post_nms_top_n_train if training else self.post_nms_top_n_test,
            nms_threshold=self.nms_threshold, min_size=self.min_size,
            score_threshold=self.score_threshold, box_weights=self.box_weights,
            scale_clip=self.scale_clip, nms_method=self.nms_method,
            proposal_filter=self.proposal_filter)

    def get_config(self):
        config = super().get_config()
        config.update({
            "pre_nms_top_n_train": self.pre_nms_top_n_train,
            "pre_nms_top_n_test": self.pre_nms_top_n_test,
            "post_nms_top_n_train": self.post_nms_top_n_train,
            "post_nms_top_n_test": self.post_nms_top_n_test,
            "nms_threshold": self.nms_threshold, "min_size": self.min_size,
            "score_threshold": self.score_threshold, "box_weights": list(self.box_weights),
            "scale_clip": self.scale_clip, "nms_method": self.nms_method,
            "proposal_filter": self.proposal_filter,
            "fg_iou_threshold": self.fg_iou_threshold, "bg_iou_threshold": self.bg_iou_threshold,
            "allow_low_quality_matches": self.allow_low_quality_matches,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction, "seed": self.seed,
        })
        return config
