"""YOLACT (Bolya et al. 2019, "YOLACT: Real-time Instance Segmentation", sections 3 and 4): a
one-stage detector predicting k prototype masks per image and k mask coefficients per anchor.

Method (the reference ``Yolact`` / ``Detect`` / ``MultiBoxLoss`` of ``yolact_base_config``):
    1. normalise the image, zero the padding; ResNet -> C3..C5 -> FPN -> P3..P7 (bilinear
       top-down, ReLU outputs, P6 / P7 by stride-2 convs)
    2. protonet on P3 -> prototypes (B, Hp, Wp, k); one prediction head over P3..P7 -> box
       deltas (B, N, 4), class logits (B, N, K), tanh mask coefficients (B, N, k)
    3. anchors ``ops.yolact_anchors`` (one scale per level, scaled by input size / 550)
    4. training: ``ops.match_anchors`` on the used GT rows (IoU >= 0.5 positive, < 0.4
       background, forced best anchors) with the crowd boxes appended as crowd rows
       (anchors they cover become neutral) inside ``call``; a 1x1 semantic head
       on P3. ``compute_losses``: ``losses.yolact_*`` with counts summed over replicas.
    5. inference: decode with weights (10, 10, 5, 5) and no clamp on exp, softmax, Fast NMS
       per class on the foreground scores (``ops.fast_nms``, ``threshold_on="anchor"``: an
       anchor enters when its best foreground score > 0.05; or standard NMS), top D; masks =
       sigmoid(prototypes @ coefficients) cropped at prototype resolution by the box in
       prototype pixels (box / input size x prototype size, 1-pixel padding).

Conventions pinned here: class 0 is background, detections carry contiguous classes 1..K-1
(0 = padding row); ``mask_type = "image"``: masks are whole-image probabilities at prototype
resolution, which ``inference.detect`` and the export resize to the original image (Mask
R-CNN's are 28x28 inside each box, ``mask_type = "box"``). Attribute names follow
YOLACT_CONTRACT (the weight converter reads them).

Shape shorthand:
    B  batch size;  H, W  (padded) input size;  N  anchors (19,248 at 550)
    K  classes incl. background;  k  prototypes;  Hp, Wp  prototype size (138 at 550)
    M' GT rows in use (``used_gt_rows``);  D  detections per image;  Hs, Ws  P3 size
"""
import keras
import tensorflow as tf

from keras_maskrcnn import losses
from keras_maskrcnn.losses import global_count
from keras_maskrcnn.models.base import Detector
from keras_maskrcnn.ops.prototype_masks import assemble_masks, crop_masks
from keras_maskrcnn.ops.targets import replica_seed, used_gt_rows

LOSS_NAMES = ("class", "box", "mask", "semantic")


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class YOLACT(Detector):
    """YOLACT with built parts and primitive settings (``builders.build_yolact`` makes one).

    Args:
        backbone: ResNet layer, images -> {"C2".."C5"}. fpn: FPN layer C3..C5 -> P3..P7.
        protonet: ``layers.protonet.Protonet``: P3 -> prototypes (B, Hp, Wp, k).
        prediction_head: ``layers.dense_head.DenseHead`` with outputs box_deltas (4),
            class_logits (K), mask_coefficients (k, tanh).
        semantic_head: 1x1 ``Conv2D(K - 1)`` on P3 (training only).
        anchor_generator: ``layers.anchor_generator.YOLACTAnchorGenerator`` (scales, ratios
            w / h, square variant).
        anchor_matcher: ``layers.dense_detection.AnchorMatcher`` (training targets).
        detection_generator: ``layers.dense_detection.DenseDetectionGenerator`` (inference:
            decode, Fast NMS, top D).
        preprocessor: ``preprocessing.Preprocessor`` (normalisation here; resize in detect).
        negpos_ratio, max_masks: hard negatives per positive; masks trained per image.
        loss_weights, postprocessor, config_dict: see ``Detector``.
        mask_seed: seed of the random subset of masks trained when an image has more than
            ``max_masks`` positives.

    Inputs (dict): images (B, H, W, 3) float RGB in [0, 255], image_sizes (B, 2) int32; in
        training also gt_boxes (B, M, 4), gt_classes (B, M) int32 (contiguous, -1 padding),
        gt_masks (B, M, H, W) uint8, optionally gt_crowd_boxes (B, C, 4) xyxy (the crowd
        regions, -1 padding rows; the pipeline's ``with_crowd``), used by the matching only.
    Outputs (inference): boxes (B, D, 4) xyxy input pixels, scores (B, D), classes (B, D)
        int32 (0 = padding), num_detections (B,), masks (B, D, Hp, Wp) float probabilities.
    """

    mask_type = "image"

    def __init__(self, backbone, fpn, protonet, prediction_head, semantic_head,
                 anchor_generator, anchor_matcher, detection_generator, *, preprocessor,
                 negpos_ratio, max_masks, loss_weights, postprocessor, config_dict=None,
                 mask_seed=0, **kwargs):
        super().__init__(LOSS_NAMES, loss_weights, preprocessor, postprocessor,
                         config_dict=config_dict, **kwargs)
        self.backbone, self.fpn, self.protonet = backbone, fpn, protonet
        self.prediction_head, self.semantic_head = prediction_head, semantic_head
        self.anchor_generator, self.anchor_matcher = anchor_generator, anchor_matcher
        self.detection_generator = detection_generator
        self.negpos_ratio, self.max_masks = int(negpos_ratio), int(max_masks)
        self.mask_seed = keras.random.SeedGenerator(mask_seed, name="mask_seed")

    @property
    def num_classes(self):
        """K, background included."""
        return self.prediction_head.output_channels["class_logits"]

    @property
    def num_anchors(self):
        return self.anchor_generator.num_anchors

    @property
    def anchor_scales(self):
        return self.anchor_generator.scales

    def build_with_dummy_batch(self, size=64):
        """Every weight, the training-only semantic head's too (an inference pass skips it)."""
        super().build_with_dummy_batch(size)
        if not self.semantic_head.built:
            self.semantic_head.build((None, None, None, self.fpn.channels))

    # ----------------------------------------------------------------------------- forward
    def call(self, inputs, training=False):
        images, image_sizes = inputs["images"], tf.cast(inputs["image_sizes"], tf.int32)
        features = self.fpn(self.backbone(self.preprocessor.normalize(images, image_sizes)))
        prototypes = self.protonet(features["P3"])  # (B, Hp, Wp, k) float32
        predictions = self.prediction_head(features)  # (B, N, ...) float32 each
        anchors = self.anchors(images, features)  # (N, 4)
        if training:
            return self.training_outputs(inputs, features, anchors, prototypes, predictions)
        return self.inference_outputs(images, anchors, prototypes, predictions)

    def anchors(self, images, features):
        """(N, 4) xyxy anchors in input pixels, levels in the head's order."""
        return self.anchor_generator(images, features)

    # ---------------------------------------------------------------------------- training
    def training_outputs(self, inputs, features, anchors, prototypes, predictions):
        gt_boxes, gt_classes = used_gt_rows(tf.cast(inputs["gt_boxes"], tf.float32),
                                            tf.cast(inputs["gt_classes"], tf.int32))
        used = tf.shape(gt_classes)[1]  # M'
        match_boxes, match_classes, crowd = gt_boxes, gt_classes, None
        if inputs.get("gt_crowd_boxes") is not None:
            match_boxes, match_classes, crowd = with_crowd_rows(gt_boxes, gt_classes,
                                                                inputs["gt_crowd_boxes"])
        # matched_gt < M' for every positive: crowd rows (after the M' rows) are never matched
        labels, matched_gt, box_targets = self.anchor_matcher(anchors, match_boxes,
                                                              match_classes, crowd)
        segmentation = tf.cast(self.semantic_head(features["P3"]), tf.float32)  # (B, Hs, Ws, K-1)
        return {
            "class_logits": predictions["class_logits"], "box_deltas": predictions["box_deltas"],
            "mask_coefficients": predictions["mask_coefficients"], "prototypes": prototypes,
            "segmentation_logits": segmentation, "labels": labels, "matched_gt": matched_gt,
            "box_targets": box_targets, "gt_boxes": gt_boxes, "gt_classes": gt_classes,
            "gt_masks": inputs["gt_masks"][:, :used],  # (B, M', H, W)
            "mask_seed": replica_seed(self.mask_seed.next()),  # replicas draw independently
        }

    def compute_losses(self, outputs):
        """Training outputs -> {loss name: scalar} (unweighted; ``loss_weights`` weigh them).

        Class, box and mask losses are divided by the positives of the global batch, the
        semantic loss by its images (``global_count``), so the replicas' losses add up to the
        loss of the global batch on one device.
        """
        labels = outputs["labels"]
        positives = global_count(labels > 0)
        images = global_count(tf.ones(tf.shape(labels)[:1], tf.bool))
        return {
            "class": losses.yolact_class_loss(outputs["class_logits"], labels,
                                              self.negpos_ratio, num_positives=positives),
            "box": losses.yolact_box_loss(outputs["box_deltas"], outputs["box_targets"],
                                          labels, num_positives=positives, weight=1.0),
            "mask": losses.yolact_mask_loss(
                outputs["prototypes"], outputs["mask_coefficients"], labels,
                outputs["matched_gt"], outputs["gt_boxes"], outputs["gt_masks"],
                num_positives=positives, max_masks=self.max_masks, seed=outputs["mask_seed"],
                weight=1.0),
            "semantic": losses.yolact_semantic_loss(
                outputs["segmentation_logits"], outputs["gt_masks"], outputs["gt_classes"],
                num_images=images),
        }

    # --------------------------------------------------------------------------- inference
    def inference_outputs(self, images, anchors, prototypes, predictions):
        dets = self.detection_generator(predictions["box_deltas"],
                                        predictions["class_logits"], anchors)
        valid = dets["indices"] >= 0  # (B, D)
        coefficients = tf.gather(predictions["mask_coefficients"],
                                 tf.maximum(dets["indices"], 0), batch_dims=1)  # (B, D, k)
        masks = assemble_masks(prototypes, coefficients)  # (B, D, Hp, Wp)
        image = tf.cast(tf.shape(images)[1:3], tf.float32)  # (H, W)
        proto = tf.cast(tf.shape(prototypes)[1:3], tf.float32)  # (Hp, Wp)
        xyxy = lambda hw: tf.stack([hw[1], hw[0], hw[1], hw[0]])  # (H, W) -> (4,)
        masks = crop_masks(masks, dets["boxes"] / xyxy(image) * xyxy(proto))  # prototype pixels
        masks = tf.where(valid[:, :, None, None], masks, 0.0)
        return {
            "boxes": dets["boxes"], "scores": dets["scores"],
            "classes": tf.where(valid, dets["classes"] + 1, 0),  # contiguous 1..K-1
            "num_detections": dets["num_detections"], "masks": masks,
        }


def with_crowd_rows(gt_boxes, gt_classes, crowd_boxes):
    """GT rows for ``match_anchors`` with the used crowd boxes appended as crowd rows.

    Args:
        gt_boxes: (B, M', 4); gt_classes: (B, M') int32 (padding <= 0).
        crowd_boxes: (B, C, 4) xyxy; padding rows -1 (a row is a crowd box when x2 > x1 and
            y2 > y1).

    Returns:
        boxes (B, M' + C', 4), classes (B, M' + C') int32 (crowd rows 1, padding -1), is_crowd
        (B, M' + C') bool; C' = the used crowd rows (``used_gt_rows``).
    """
    crowd_boxes = tf.cast(crowd_boxes, tf.float32)
    real = tf.logical_and(crowd_boxes[..., 2] > crowd_boxes[..., 0],
                          crowd_boxes[..., 3] > crowd_boxes[..., 1])  # (B, C)
    crowd_boxes, crowd_classes = used_gt_rows(crowd_boxes, tf.where(real, 1, -1))
    boxes = tf.concat([gt_boxes, crowd_boxes], axis=1)  # (B, M' + C', 4)
    classes = tf.concat([gt_classes, crowd_classes], axis=1)  # (B, M' + C')
    is_crowd = tf.concat([tf.zeros_like(gt_classes, tf.bool), crowd_classes > 0], axis=1)
    return boxes, classes, is_crowd
