"""Mask R-CNN (with optional mask and keypoint heads) as one Keras 3 model.

Shape shorthand:
    B  batch size;  Hp, Wp  padded input size (multiple of 32)
    N  anchors over all levels;  P  proposals per image
    S  sampled RoIs per image (training);  F  foreground slots (S * positive_fraction)
    F' foreground slots in use: the most positives of an image of the batch (dynamic)
    D  detections per image;  M  GT per image (padded with -1)
    K  classes incl. background;  Kp keypoints;  Sm mask size (28);  Sk heatmap size (56)

Method, as in He et al. 2017 and torchvision's ``MaskRCNN``:
    1. normalise the image, zero the padding; ResNet -> C2..C5 -> FPN -> P2..P6
    2. RPN head on every level -> objectness logits (B, N), deltas (B, N, 4); anchors (N, 4)
    3. proposals: top-k per level, decode, clip, NMS -> (B, P, 4)
    4. training: sample S RoIs from proposals + GT (positives first); inference: RoIs = proposals
    5. multi-level RoIAlign 7x7 -> box head -> class logits (B, R, K), deltas (B, R, K, 4)
    6. training: mask / keypoint heads on the foreground slots (F' <= F), with their targets;
       inference: detections (per-class NMS, top D), then mask / keypoint heads on them.
Training returns predictions, targets and weights; ``compute_loss`` is arithmetic over them.
"""
import keras
import tensorflow as tf

from keras_maskrcnn import builders, losses
from keras_maskrcnn import training as training_lib  # also registers the optimizers for .keras loading
from keras_maskrcnn.losses import global_count
from keras_maskrcnn.ops.anchors import level_sizes, multilevel_anchors
from keras_maskrcnn.ops.keypoints import heatmaps_to_keypoints, keypoints_to_heatmap
from keras_maskrcnn.ops.masks import project_masks_on_boxes
from keras_maskrcnn.ops.roi_align import multilevel_roi_align
from keras_maskrcnn.ops.targets import foreground_slots, replica_seed, rpn_targets, used_gt_rows


LOSS_NAMES = ("rpn_objectness", "rpn_box", "box_classification", "box_regression", "mask",
              "keypoint")


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskRCNN(keras.Model):
    """Mask R-CNN / Faster R-CNN / Keypoint R-CNN, depending on which heads the config enables.

    Args:
        config: dict with the ``model`` and ``input`` sections of a keras_maskrcnn Config
            (``builders.model_config_dict``); validated here.
        category_ids: dataset category id of each contiguous class 1..K-1; None = identity.

    Inputs (dict): images (B, Hp, Wp, 3) float RGB in [0, 255], resized, zero-padded;
        image_sizes (B, 2) int32 resized unpadded (h, w); in training also gt_boxes (B, M, 4),
        gt_classes (B, M) int32 (contiguous, -1 padding), gt_masks (B, M, Hp, Wp) uint8,
        gt_keypoints (B, M, Kp, 3).
    Outputs (inference): boxes (B, D, 4) xyxy in input pixels, scores (B, D), classes (B, D)
        int32 contiguous (0 = padding), num_detections (B,), masks (B, D, Sm, Sm) probabilities
        of the detected class, keypoints (B, D, Kp, 3) [x, y, score] in input pixels.
    """

    def __init__(self, config, category_ids=None, **kwargs):
        super().__init__(**kwargs)
        self.config_dict = config
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        settings = builders.parse_model_config(config)
        self.model_settings, self.input_settings = settings.model, settings.input
        m = self.model_settings
        previous_policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(m.dtype_policy)  # the sub-layers take the config's policy
        try:
            self.backbone, self.fpn = builders.build_backbone(m)
            self.rpn_head, self.proposal_generator = builders.build_rpn(m)
            self.roi_sampler = builders.build_roi_sampler(m)
            self.detection_generator = builders.build_detection_generator(m)
            self.box_head, self.box_predictor = builders.build_box_head(m)
            self.mask_head, self.mask_predictor = builders.build_mask_head(m)
            self.keypoint_head, self.keypoint_predictor = builders.build_keypoint_head(m)
        finally:
            keras.config.set_dtype_policy(previous_policy)
        self.rpn_seed = keras.random.SeedGenerator(m.rpn.batch_size_per_image, name="rpn_seed")
        self.loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss")
                              for name in self.enabled_losses}
        self.total_loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def enabled_losses(self):
        names = list(LOSS_NAMES[:4])
        if self.model_settings.mask_head.enabled:
            names.append("mask")
        if self.model_settings.keypoint_head.enabled:
            names.append("keypoint")
        return names

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

    @property
    def num_anchors(self):
        return len(self.model_settings.anchors.aspect_ratios)

    def extract_features(self, images, image_sizes):
        """Normalised, padding-zeroed images -> {"P2": (B, Hp/4, Wp/4, C), ...}."""
        mean = tf.constant(self.input_settings.pixel_mean, tf.float32) * 255.0
        std = tf.constant(self.input_settings.pixel_std, tf.float32) * 255.0
        x = (tf.cast(images, tf.float32) - mean) / std
        shape = tf.shape(x)
        rows = tf.range(shape[1])[None, :, None] < image_sizes[:, 0, None, None]  # (B, Hp, 1)
        cols = tf.range(shape[2])[None, None, :] < image_sizes[:, 1, None, None]  # (B, 1, Wp)
        x = x * tf.cast(tf.logical_and(rows, cols), x.dtype)[..., None]  # zero the padding
        features = self.fpn(self.backbone(x))
        return {level: features[level] for level in self.model_settings.fpn.levels}

    def anchors(self, images, features):
        """(N, 4) anchors of every level, torchvision's order and strides."""
        shape = tf.shape(images)
        sizes = [(tf.shape(f)[1], tf.shape(f)[2]) for f in features.values()]
        per_level = multilevel_anchors(
            shape[1], shape[2], sizes, sizes=[(s,) for s in self.model_settings.anchors.sizes],
            aspect_ratios=self.model_settings.anchors.aspect_ratios)
        return tf.concat(per_level, axis=0)

    def pool(self, features, boxes, output_size):
        """Multi-level RoIAlign: boxes (B, R, 4) -> (B, R, output_size, output_size, C)."""
        a = self.model_settings.roi_align
        pooled = {f"P{l}": features[f"P{l}"] for l in range(a.min_level, a.max_level + 1)}
        return multilevel_roi_align(
            pooled, boxes, output_size, sampling_ratio=a.sampling_ratio, aligned=a.aligned,
            min_level=a.min_level, max_level=a.max_level, canonical_size=a.canonical_size,
            canonical_level=a.canonical_level)

    def box_predictions(self, features, rois):
        """rois (B, R, 4) -> class logits (B, R, K), deltas (B, R, K, 4)."""
        pooled = self.pool(features, rois, self.model_settings.box_head.pool_size)
        predictions = self.box_predictor(self.box_head(pooled))
        return predictions["class_logits"], predictions["box_deltas"]

    def mask_logits(self, features, rois):
        """rois (B, R, 4) -> mask logits (B, R, Sm, Sm, K or 1)."""
        pooled = self.pool(features, rois, self.model_settings.mask_head.pool_size)
        return self.mask_predictor(self.mask_head(pooled))

    def keypoint_logits(self, features, rois):
        """rois (B, R, 4) -> heatmap logits (B, R, Sk, Sk, Kp)."""
        pooled = self.pool(features, rois, self.model_settings.keypoint_head.pool_size)
        return self.keypoint_predictor(self.keypoint_head(pooled))

    # ---------------------------------------------------------------------------- training
    def training_outputs(self, inputs, features, anchors, rpn_logits, rpn_deltas, proposals):
        m = self.model_settings
        gt_boxes = tf.cast(inputs["gt_boxes"], tf.float32)
        gt_classes = tf.cast(inputs["gt_classes"], tf.int32)
        rpn_gt_boxes, rpn_gt_classes = used_gt_rows(gt_boxes, gt_classes)  # (B, M', ...)
        rpn_labels, rpn_box_targets = rpn_targets(
            anchors, rpn_gt_boxes, rpn_gt_classes > 0, fg_iou_threshold=m.rpn.fg_iou_threshold,
            bg_iou_threshold=m.rpn.bg_iou_threshold,
            allow_low_quality_matches=m.rpn.allow_low_quality_matches,
            batch_size_per_image=m.rpn.batch_size_per_image,
            positive_fraction=m.rpn.positive_fraction, box_weights=m.rpn.box_weights,
            seed=replica_seed(self.rpn_seed.next()))  # replicas draw independently
        sample = self.roi_sampler(proposals["proposals"], proposals["valid"], gt_boxes,
                                  gt_classes)
        class_logits, box_deltas = self.box_predictions(features, sample["rois"])
        outputs = {
            "rpn_objectness_logits": rpn_logits, "rpn_box_deltas": rpn_deltas,
            "rpn_labels": rpn_labels, "rpn_box_targets": rpn_box_targets,
            "class_logits": class_logits, "box_deltas": box_deltas,
            "roi_classes": sample["roi_classes"], "box_targets": sample["box_targets"],
        }
        num_fg = int(m.roi_heads.batch_size_per_image * m.roi_heads.positive_fraction)  # F
        fg_rois, fg_classes, fg_matched = foreground_slots(sample, num_fg)  # (B, F', ...)
        outputs["fg_roi_classes"] = fg_classes
        if self.mask_head is not None:
            outputs["mask_logits"] = self.mask_logits(features, fg_rois)
            # Positives match valid GT rows, all among the first M'; the other slots' targets
            # are ignored by the loss (their index is only kept in range). Sampling B x M'
            # masks instead of B x max_instances saved 150 MB of peak at 512x768.
            used_rows = tf.shape(rpn_gt_classes)[1]  # M'
            outputs["mask_targets"] = project_masks_on_boxes(
                inputs["gt_masks"][:, :used_rows], fg_rois,
                tf.minimum(fg_matched, used_rows - 1), m.mask_head.mask_size,
                sampling_ratio=m.roi_align.sampling_ratio, aligned=m.roi_align.aligned)
        if self.keypoint_head is not None:
            outputs["keypoint_logits"] = self.keypoint_logits(features, fg_rois)
            gt_kp = tf.gather(tf.cast(inputs["gt_keypoints"], tf.float32),
                              tf.maximum(fg_matched, 0), batch_dims=1)  # (B, F, Kp, 3)
            targets, valid = keypoints_to_heatmap(gt_kp, fg_rois, m.keypoint_head.heatmap_size)
            outputs["keypoint_targets"] = targets
            outputs["keypoint_valid"] = tf.logical_and(valid, fg_classes[..., None] > 0)
        return outputs

    def compute_losses(self, outputs):
        """Training outputs -> {loss name: scalar} (unweighted), torchvision's definitions.

        Each loss is a sum over this replica's batch divided by a count summed over all
        replicas (``global_count``), so the replicas' losses add up to the loss of the whole
        global batch on one device (tf.distribute sums the replicas' gradients).
        """
        beta_rpn = self.model_settings.rpn.smooth_l1_beta
        beta_box = self.model_settings.roi_heads.smooth_l1_beta
        result = {}
        result["rpn_objectness"], result["rpn_box"] = losses.rpn_losses(
            outputs["rpn_objectness_logits"], outputs["rpn_box_deltas"], outputs["rpn_labels"],
            outputs["rpn_box_targets"], beta=beta_rpn,
            num_sampled=global_count(outputs["rpn_labels"] >= 0))
        result["box_classification"], result["box_regression"] = losses.fastrcnn_losses(
            outputs["class_logits"], outputs["box_deltas"], outputs["roi_classes"],
            outputs["box_targets"], beta=beta_box,
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

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Weighted sum of the losses of a training forward pass (``y_pred``); tracks each.

        Under a strategy this replica's share of the global-batch loss (see
        ``compute_losses``); the trackers show the global-batch value.
        """
        weights = self.model_settings.loss_weights
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        total = 0.0
        for name, value in self.compute_losses(y_pred).items():
            self.loss_trackers[name].update_state(value * replicas)
            total = total + getattr(weights, name) * value
        self.total_loss_tracker.update_state(total * replicas)
        return total

    def test_step(self, data):
        """Validation loss: the training forward pass (targets need it), without updates."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True)
        self.compute_loss(x=x, y_pred=y_pred, training=False)
        return self.compute_metrics(x, None, y_pred)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The loss trackers' values: {name: scalar}, or shape [1] under a multi-worker strategy.

        Keras 3 ``fit`` reduces step results under MultiWorkerMirroredStrategy with
        ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars (keras-team/keras
        #20329); a [1] value is reduced to a scalar there, so the logs stay scalars.
        """
        results = {m.name: m.result() for m in self.metrics}
        if training_lib.is_multi_worker(tf.distribute.get_strategy()):
            results = {k: tf.reshape(v, [1]) for k, v in results.items()}
        return results

    def compile(self, *args, **kwargs):
        """Keras' ``compile``; then, when every layer is built, the optimizer's slots too.

        Keras otherwise creates them inside the first traced train step, and a tf.function
        whose first trace creates variables is traced a second time and keeps both graphs
        and their kernels. R50-FPN Mask R-CNN, batch 2 at 512x768, 2 CPU cores: first step
        24 s instead of 35-41 s, and 133 MiB less resident memory after it. The slots follow
        ``trainable_variables`` at this call: freeze or unfreeze layers before ``compile``
        (Keras asks for a new ``compile`` after such a change anyway).
        """
        super().compile(*args, **kwargs)
        if self.optimizer is not None and all(layer.built for layer in self._flatten_layers()):
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras' pre-``fit`` symbolic build once the optimizer is built.

        Keras (3.15) otherwise takes a batch from the distributed dataset and averages it over
        the replicas with ``strategy.reduce`` first, which fails under
        MultiWorkerMirroredStrategy for a dict of images and GT (keras-team/keras#20585).
        Its symbolic build is an inference pass, which ``build_with_dummy_batch`` already did
        before the optimizer could be built on the weights (``compile`` builds it then, or
        ``run.build_training_model`` when a layer was left unbuilt).
        """
        if self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

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
            outputs["keypoints"] = heatmaps_to_keypoints(heatmaps, dets["boxes"])
        return outputs

    def build(self, input_shape=None):
        """Sub-layers build on the first call (their input shapes depend on the config)."""
        self.built = True

    def get_build_config(self):
        return {"dummy_batch": True}

    def build_from_config(self, config):
        """Loading a ``.keras`` file: create every weight before they are read."""
        self.build_with_dummy_batch()

    @property
    def metrics(self):
        return [self.total_loss_tracker, *self.loss_trackers.values()]

    def build_with_dummy_batch(self, size=64):
        """Creates every weight: one inference pass on a zero (1, size, size, 3) batch."""
        self({"images": tf.zeros((1, size, size, 3)),
              "image_sizes": tf.constant([[size, size]], tf.int32)}, training=False)

    def detect(self, images, **kwargs):
        """Detections for a list of HxWx3 uint8 images; see ``keras_maskrcnn.inference``."""
        from keras_maskrcnn.inference import detect
        return detect(self, images, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"config": self.config_dict, "category_ids": self.category_ids})
        return config
