"""Mask R-CNN (He et al. 2017, section 3; keypoints: section 5) on Faster R-CNN with FPN, or
with the ResNet-C4 backbone and the res5 RoI head (section 3, "Network Architecture").

One Keras 3 model, with optional mask and keypoint heads (Faster / Mask / Keypoint R-CNN).

Shape shorthand:
    B  batch size;  Hp, Wp  padded input size (multiple of 32)
    N  anchors over all levels;  P  proposals per image
    S  sampled RoIs per image (training);  F  foreground slots (S * positive_fraction)
    F' foreground slots in use: the most positives of an image of the batch (dynamic)
    D  detections per image;  M  GT per image (padded with -1)
    K  classes incl. background;  Kp keypoints;  Sm mask size (28; C4: 14);  Sk heatmap (56)

Method, as in He et al. 2017 and torchvision's ``MaskRCNN``:
    1. normalise the image, zero the padding; ResNet -> C2..C5 -> FPN -> P2..P6
    2. RPN head on every level -> objectness logits (B, N), deltas (B, N, 4); anchors (N, 4)
    3. proposals: top-k per level, decode, clip, NMS -> (B, P, 4)
    4. training: sample S RoIs from proposals + GT (positives first); inference: RoIs = proposals
    5. multi-level RoIAlign 7x7 -> box head -> class logits (B, R, K), deltas (B, R, K, 4)
    6. training: mask / keypoint heads on the foreground slots (F' <= F), with their targets;
       inference: detections (per-class NMS, top D), then mask / keypoint heads on them.
C4 variant (detectron2's ``Res5ROIHeads``) is a choice of parts: ``fpn`` None (step 1 stops at
C4, stride 16), a one-level anchor generator with every anchor size on "C4", poolers of the
"C4" level (14x14), and the res5 head as ``roi_feature_head`` (-> 7x7), averaged for the box
predictor (the box branch has no head) and fed to the mask predictor (14x14 masks). In training the
mask path runs res5 again on the foreground slots (the same values as reusing the box path's,
whose slots they are).
Training returns predictions, targets and weights; ``compute_losses`` is arithmetic over them;
mask and heatmap targets take the logits' size (as torchvision's and detectron2's losses).
The model receives built parts that hold their settings (anchor generator, the proposal
generator with the RPN's target settings, and one ``models.roi_branch`` branch per RoI head:
pooler, head, predictor and the branch's settings) plus loss settings; ``keras_maskrcnn.
builders`` maps a config onto them; the Keras machinery (loss tracking, fit, saving,
``detect``) is ``models.base.Detector``'s.
"""
import keras
import tensorflow as tf

from keras_maskrcnn import losses
from keras_maskrcnn.losses import global_count
from keras_maskrcnn.models.base import Detector
from keras_maskrcnn.models.roi_branch import branch_parts, check_branches
from keras_maskrcnn.ops.anchors import level_sizes
from keras_maskrcnn.ops.keypoints import (heatmaps_to_keypoints, keypoints_to_heatmap,
                                          mask_absent_keypoints)
from keras_maskrcnn.ops.masks import project_cropped_masks_on_boxes, project_masks_on_boxes
from keras_maskrcnn.ops.targets import foreground_slots, used_gt_rows


LOSS_NAMES = ("rpn_objectness", "rpn_box", "box_classification", "box_regression", "mask",
              "keypoint")


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskRCNN(Detector):
    """Mask R-CNN / Faster R-CNN / Keypoint R-CNN, depending on which branches it is given.

    Args:
        backbone: ResNet layer, images -> {"C2".."C5"} ({"C2".."C4"} for C4).
        fpn: FPN layer -> {"P2".."P6"}; None: the C4 variant (features = the backbone's).
        anchor_generator: ``layers.anchor_generator.AnchorGenerator``: its ``levels`` are the
            feature levels the RPN and the anchors use (C4: ("C4",), every size on it).
        rpn_head: -> objectness logits (B, N), deltas (B, N, 4).
        proposal_generator: ``layers.rpn.ProposalGenerator``: proposals, and the RPN's
            training targets (``targets``) with their settings and seed.
        roi_sampler, detection_generator: ``layers.roi_sampler`` /
            ``layers.detection_generator`` layers.
        box_branch: ``models.roi_branch.RoIBranch``: the ``RoIPooler`` (levels, level mapping,
            sampling, output size; C4: one "C4" level), head and predictor -> class logits
            (B, R, K), deltas (B, R, K, 4); its head None with a ``roi_feature_head``: the
            mean over that head's output (C4).
        mask_branch: ``models.roi_branch.MaskBranch`` -> mask logits (B, R, Sm, Sm, K or 1),
            with its ``gt_mask_format``; None: no masks.
        keypoint_branch: ``models.roi_branch.KeypointBranch`` -> heatmap logits (B, R, Sk,
            Sk, Kp), with its ``score`` and ``category_ids``; None: no keypoints.
        roi_feature_head: per-RoI layer shared by the box and mask paths, applied to the
            pooled RoIs before them (``models.res5_head.Res5Head``, the C4 variant); None: FPN.
        preprocessor: ``preprocessing.Preprocessor`` (normalisation here; resize in detect).
        postprocessor: ``postprocessing.Postprocessor``: the mask threshold, paste style,
            keypoint offset of COCO results, category ids and names (see ``Detector``).
        loss_settings: ``models.roi_branch.RCNNLossSettings``: the smooth L1 betas of the two
            box losses and the loss weights.
        config_dict: see ``Detector``.
    The parts are kept under the attributes Keras tracks them by (``box_pooler``,
    ``box_head``, ``box_predictor``, ``mask_pooler``, ..., ``keypoint_predictor``; None for a
    branch left out) and the branch settings as ``gt_mask_format``, ``keypoint_score``,
    ``keypoint_category_ids``: the weight paths are the same as before the branches were
    grouped.

    Inputs (dict): images (B, Hp, Wp, 3) float RGB in [0, 255], resized, zero-padded;
        image_sizes (B, 2) int32 resized unpadded (h, w); in training also gt_boxes (B, M, 4),
        gt_classes (B, M) int32 (contiguous, -1 padding), gt_masks (B, M, Hp, Wp) uint8 (or
        (B, M, C, C) crops, the mask branch's ``gt_mask_format``),
        gt_keypoints (B, M, Kp, 3).
    Outputs (inference): boxes (B, D, 4) xyxy in input pixels, scores (B, D), classes (B, D)
        int32 contiguous (0 = padding), num_detections (B,), masks (B, D, Sm, Sm) probabilities
        of the detected class, keypoints (B, D, Kp, 3) [x, y, score] in input pixels ((0, 0,
        -inf) for detections of a class without keypoints).
    """

    mask_type = "box"  # masks are Sm x Sm inside each box (YOLACT's: "image")

    def __init__(self, backbone, fpn, anchor_generator, rpn_head, proposal_generator,
                 roi_sampler, detection_generator, box_branch, mask_branch=None,
                 keypoint_branch=None, *, roi_feature_head=None, preprocessor, postprocessor,
                 loss_settings, config_dict=None, **kwargs):
        check_branches(box_branch, mask_branch, keypoint_branch, loss_settings, LOSS_NAMES)
        names = list(LOSS_NAMES[:4]) + (["mask"] if mask_branch is not None else []) + (
            ["keypoint"] if keypoint_branch is not None else [])
        super().__init__(names, loss_settings.weights, preprocessor, postprocessor,
                         config_dict=config_dict, **kwargs)
        if box_branch.head is None and roi_feature_head is None:
            raise ValueError("box_branch.head is None: only with a roi_feature_head (C4)")
        if fpn is None and (roi_feature_head is None or keypoint_branch is not None
                            or len(anchor_generator.levels) != 1):
            raise ValueError("fpn None (C4) needs a roi_feature_head, one feature level and no "
                             "keypoint branch")
        mask_parts, keypoint_parts = branch_parts(mask_branch), branch_parts(keypoint_branch)
        # Attribute names and the order they are set in = the tracked layers' names and order
        # (weight paths, the .weights.h5 layout, model.weights): as before the branches.
        self.backbone, self.fpn = backbone, fpn
        self.roi_feature_head = roi_feature_head
        self.anchor_generator = anchor_generator
        self.rpn_head, self.proposal_generator = rpn_head, proposal_generator
        self.roi_sampler, self.detection_generator = roi_sampler, detection_generator
        self.box_pooler, self.mask_pooler = box_branch.pooler, mask_parts[0]
        self.keypoint_pooler = keypoint_parts[0]
        self.box_head, self.box_predictor = box_branch.head, box_branch.predictor
        self.mask_head, self.mask_predictor = mask_parts[1:]
        self.keypoint_head, self.keypoint_predictor = keypoint_parts[1:]
        # The branches' settings (None without the branch).
        self.gt_mask_format = mask_branch.gt_mask_format if mask_branch else None
        self.rpn_smooth_l1_beta = loss_settings.rpn_smooth_l1_beta
        self.box_smooth_l1_beta = loss_settings.box_smooth_l1_beta
        self.keypoint_score = keypoint_branch.score if keypoint_branch else None
        self.keypoint_category_ids = (
            None if keypoint_branch is None or keypoint_branch.category_ids is None
            else list(keypoint_branch.category_ids))
        if keypoint_branch is not None:
            self.keypoint_classes()  # unknown ids fail here rather than at the first call

    @property
    def num_classes(self):
        """K, background included."""
        return self.box_predictor.num_classes

    @property
    def num_anchors(self):
        """A, anchors per location (the anchor generator's)."""
        return self.anchor_generator.num_anchors

    # Read-only views of the parts' settings (what the model is made of).
    @property
    def feature_levels(self):
        """Levels the RPN and the anchors use, finest first (C4: ("C4",))."""
        return self.anchor_generator.levels

    @property
    def anchor_sizes(self):
        """Every anchor size, levels in order (FPN: one per level; C4: all on its level)."""
        return tuple(s for level in self.anchor_generator.sizes for s in level)

    @property
    def aspect_ratios(self):
        return self.anchor_generator.aspect_ratios

    @property
    def roi_levels(self):
        """(min, max) pyramid levels the RoIs are pooled from (C4: (4, 4))."""
        return self.box_pooler.min_level, self.box_pooler.max_level

    @property
    def mask_size(self):
        """Sm, the side of the mask logits and targets: the mask pooler's size, halved by a
        roi_feature_head (C4's stride-2 res5), doubled by the predictor's deconv; None
        without masks."""
        if self.mask_pooler is None:
            return None
        size = self.mask_pooler.output_size
        return 2 * (size // 2 if self.roi_feature_head is not None else size)

    def keypoint_classes(self):
        """(K,) Python bools: which contiguous classes have keypoints (background: False)."""
        k = self.num_classes
        if self.keypoint_category_ids is None:
            return (False,) + (True,) * (k - 1)
        dataset_ids = self.category_ids or list(range(1, k))  # contiguous class i + 1
        unknown = sorted(set(self.keypoint_category_ids) - set(dataset_ids))
        if unknown:
            raise ValueError(f"keypoint_category_ids {unknown} are not category ids of the "
                             f"model's classes {dataset_ids}")
        return (False,) + tuple(d in self.keypoint_category_ids for d in dataset_ids)

    # ----------------------------------------------------------------------------- forward
    def call(self, inputs, training=False):
        images, image_sizes = inputs["images"], tf.cast(inputs["image_sizes"], tf.int32)
        features = self.extract_features(images, image_sizes)
        rpn_logits, rpn_deltas = self.rpn_head(features)  # (B, N), (B, N, 4)
        anchors = self.anchors(images, features)  # (N, 4)
        proposals = self.proposal_generator(
            rpn_logits, rpn_deltas, anchors, level_sizes(features, self.num_anchors),
            image_sizes, training=training)
        if training:
            return self.training_outputs(inputs, features, anchors, rpn_logits, rpn_deltas,
                                         proposals)
        return self.inference_outputs(features, proposals, image_sizes)

    def extract_features(self, images, image_sizes):
        """Normalised, padding-zeroed images -> {"P2": (B, Hp/4, Wp/4, C), ...} ({"C4": ...})."""
        features = self.backbone(self.preprocessor.normalize(images, image_sizes))
        if self.fpn is not None:
            features = self.fpn(features)
        return {level: features[level] for level in self.anchor_generator.levels}

    def anchors(self, images, features):
        """(N, 4) anchors of every level (``anchor_generator``; torchvision's order)."""
        return self.anchor_generator(images, features)

    def box_predictions(self, features, rois):
        """rois (B, R, 4) -> class logits (B, R, K), deltas (B, R, K, 4)."""
        pooled = self.box_pooler(features, rois)
        if self.roi_feature_head is not None:  # C4: res5, then the mean over each RoI
            hidden = tf.reduce_mean(self.roi_feature_head(pooled), axis=[2, 3])  # (B, R, C5)
        else:
            hidden = self.box_head(pooled)
        predictions = self.box_predictor(hidden)
        return predictions["class_logits"], predictions["box_deltas"]

    def mask_logits(self, features, rois):
        """rois (B, R, 4) -> mask logits (B, R, Sm, Sm, K or 1)."""
        pooled = self.mask_pooler(features, rois)
        if self.roi_feature_head is not None:  # C4: the box path's res5, shared weights
            pooled = self.roi_feature_head(pooled)
        return self.mask_predictor(self.mask_head(pooled))

    def keypoint_logits(self, features, rois):
        """rois (B, R, 4) -> heatmap logits (B, R, Sk, Sk, Kp)."""
        return self.keypoint_predictor(self.keypoint_head(self.keypoint_pooler(features, rois)))

    # ---------------------------------------------------------------------------- training
    def training_outputs(self, inputs, features, anchors, rpn_logits, rpn_deltas, proposals):
        gt_boxes = tf.cast(inputs["gt_boxes"], tf.float32)
        gt_classes = tf.cast(inputs["gt_classes"], tf.int32)
        rpn_gt_boxes, rpn_gt_classes = used_gt_rows(gt_boxes, gt_classes)  # (B, M', ...)
        rpn_labels, rpn_box_targets = self.proposal_generator.targets(
            anchors, rpn_gt_boxes, rpn_gt_classes > 0)  # replicas draw independently
        sample = self.roi_sampler(proposals["proposals"], proposals["valid"], gt_boxes,
                                  gt_classes)
        class_logits, box_deltas = self.box_predictions(features, sample["rois"])
        outputs = {
            "rpn_objectness_logits": rpn_logits, "rpn_box_deltas": rpn_deltas,
            "rpn_labels": rpn_labels, "rpn_box_targets": rpn_box_targets,
            "class_logits": class_logits, "box_deltas": box_deltas,
            "roi_classes": sample["roi_classes"], "box_targets": sample["box_targets"],
        }
        num_fg = int(self.roi_sampler.batch_size_per_image * self.roi_sampler.positive_fraction)
        fg_rois, fg_classes, fg_matched = foreground_slots(sample, num_fg)  # (B, F', ...)
        outputs["fg_roi_classes"] = fg_classes
        if self.mask_head is not None:
            outputs["mask_logits"] = self.mask_logits(features, fg_rois)
            # Positives match valid GT rows, all among the first M'; the other slots' targets
            # are ignored by the loss (their index is only kept in range). Sampling B x M'
            # masks instead of B x max_instances lowers the peak memory.
            used_rows = tf.shape(rpn_gt_classes)[1]  # M'
            matched = tf.minimum(fg_matched, used_rows - 1)
            settings = {"sampling_ratio": self.mask_pooler.sampling_ratio,
                        "aligned": self.mask_pooler.aligned}
            size = static_side(outputs["mask_logits"])  # Sm: targets as large as the logits
            gt_masks = inputs["gt_masks"][:, :used_rows]
            if self.gt_mask_format == "cropped":
                outputs["mask_targets"] = project_cropped_masks_on_boxes(
                    gt_masks, gt_boxes[:, :used_rows], fg_rois, matched, size, **settings)
            else:
                outputs["mask_targets"] = project_masks_on_boxes(
                    gt_masks, fg_rois, matched, size, **settings)
        if self.keypoint_head is not None:
            outputs["keypoint_logits"] = self.keypoint_logits(features, fg_rois)
            gt_kp = tf.gather(tf.cast(inputs["gt_keypoints"], tf.float32),
                              tf.maximum(fg_matched, 0), batch_dims=1)  # (B, F, Kp, 3)
            targets, valid = keypoints_to_heatmap(gt_kp, fg_rois,
                                                  static_side(outputs["keypoint_logits"]))
            outputs["keypoint_targets"] = targets
            has_keypoints = tf.gather(tf.constant(self.keypoint_classes()),
                                      tf.maximum(fg_classes, 0))  # (B, F'): False for 0
            outputs["keypoint_valid"] = tf.logical_and(valid, has_keypoints[..., None])
        return outputs

    def compute_losses(self, outputs):
        """Training outputs -> {loss name: scalar} (unweighted), torchvision's definitions.

        Each loss is a sum over this replica's batch divided by a count summed over all
        replicas (``global_count``), so the replicas' losses add up to the loss of the whole
        global batch on one device (tf.distribute sums the replicas' gradients).
        """
        result = {}
        result["rpn_objectness"], result["rpn_box"] = losses.rpn_losses(
            outputs["rpn_objectness_logits"], outputs["rpn_box_deltas"], outputs["rpn_labels"],
            outputs["rpn_box_targets"], beta=self.rpn_smooth_l1_beta,
            num_sampled=global_count(outputs["rpn_labels"] >= 0))
        result["box_classification"], result["box_regression"] = losses.fastrcnn_losses(
            outputs["class_logits"], outputs["box_deltas"], outputs["roi_classes"],
            outputs["box_targets"], beta=self.box_smooth_l1_beta,
            num_rois=global_count(outputs["roi_classes"] >= 0))
        if "mask_logits" in outputs:
            result["mask"] = losses.mask_loss(
                outputs["mask_logits"], outputs["mask_targets"], outputs["fg_roi_classes"],
                num_positives=global_count(outputs["fg_roi_classes"] > 0))
        if "keypoint_logits" in outputs:
            result["keypoint"] = losses.keypoint_loss(
                outputs["keypoint_logits"], outputs["keypoint_targets"],
                outputs["keypoint_valid"], num_valid=global_count(outputs["keypoint_valid"]))
        return result

    # --------------------------------------------------------------------------- inference
    def inference_outputs(self, features, proposals, image_sizes):
        rois = proposals["proposals"]
        class_logits, box_deltas = self.box_predictions(features, rois)
        dets = self.detection_generator(class_logits, box_deltas, rois, proposals["valid"],
                                        image_sizes)
        outputs = {k: dets[k] for k in ("boxes", "scores", "classes", "num_detections")}
        if self.mask_head is not None:
            logits = self.mask_logits(features, dets["boxes"])  # (B, D, Sm, Sm, K or 1)
            channel = dets["classes"] if logits.shape[-1] != 1 else tf.zeros_like(dets["classes"])
            logits = tf.gather(tf.transpose(logits, [0, 1, 4, 2, 3]), channel[..., None],
                               batch_dims=2)[:, :, 0]  # (B, D, Sm, Sm): detected class's mask
            outputs["masks"] = tf.sigmoid(logits)
        if self.keypoint_head is not None:
            heatmaps = self.keypoint_logits(features, dets["boxes"])  # (B, D, Sk, Sk, Kp)
            heatmaps = tf.transpose(heatmaps, [0, 1, 4, 2, 3])  # (B, D, Kp, Sk, Sk)
            keypoints = heatmaps_to_keypoints(heatmaps, dets["boxes"], score=self.keypoint_score,
                                              unroll=self.portable)
            if self.keypoint_category_ids is not None:  # (B, D): the class has keypoints
                present = tf.gather(tf.constant(self.keypoint_classes()), dets["classes"])
                keypoints = mask_absent_keypoints(keypoints, present)
            outputs["keypoints"] = keypoints
        return outputs


def static_side(logits):
    """S of (B, R, S, S, C) logits, a Python int (the heads' output sizes are static)."""
    side = logits.shape[2]
    if side is None:
        raise ValueError(f"the side of {logits.name if hasattr(logits, 'name') else 'logits'} "
                         "is not static; the heads' output sizes must be")
    return int(side)
