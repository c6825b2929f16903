"""The tiny models of the model tests (configs/tiny.yaml, configs/yolact_shapes.yaml shrunk) with
overrides, and a synthetic batch."""
import os

import numpy as np

from keras_maskrcnn import config
from support import CONFIGS

SIZE = 128
YOLACT_PROTOTYPES = 8


def tiny_config(**extra):
    overrides = [f"{k}={v}" for k, v in extra.items()]
    return config.load_config(os.path.join(CONFIGS, "tiny.yaml"), overrides=overrides)


def tiny_yolact_overrides(**extra):
    """yolact_shapes.yaml's --set overrides of the tiny YOLACT: quarter-width ResNet-18, 16 FPN
    channels, 8 prototypes, 128 px square, 10 detections (``extra`` added)."""
    overrides = {"model.backbone.width_multiplier": 0.25, "model.fpn.channels": 16,
                 "model.yolact.num_prototypes": YOLACT_PROTOTYPES, "model.accel": "off",
                 "input.size": SIZE, "model.yolact.detections_per_image": 10, **extra}
    return [f"{k}={v}" for k, v in overrides.items()]


def tiny_yolact_config(**extra):
    """The tiny YOLACT's Config (``tiny_yolact_overrides``)."""
    return config.load_config(os.path.join(CONFIGS, "yolact_shapes.yaml"),
                              overrides=tiny_yolact_overrides(**extra))


def synthetic_batch(num_gt=(2, 0), size=SIZE, num_keypoints=4, max_gt=3, seed=0):
    """A batch of noise images with rectangles as GT (image 2 may have no GT at all); no
    ``gt_keypoints`` when ``num_keypoints`` is 0 (YOLACT's batches)."""
    rng = np.random.default_rng(seed)
    b = len(num_gt)
    images = rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32)
    boxes = -np.ones((b, max_gt, 4), np.float32)
    classes = -np.ones((b, max_gt), np.int32)
    masks = np.zeros((b, max_gt, size, size), np.uint8)
    keypoints = np.zeros((b, max_gt, num_keypoints, 3), np.float32)
    for i, n in enumerate(num_gt):
        for j in range(n):
            x1, y1 = rng.uniform(0, size / 2, 2)
            w, h = rng.uniform(16, size / 2, 2)
            boxes[i, j] = [x1, y1, x1 + w, y1 + h]
            classes[i, j] = 1 + j % 3
            masks[i, j, int(y1):int(y1 + h), int(x1):int(x1 + w)] = 1
            images[i, int(y1):int(y1 + h), int(x1):int(x1 + w)] = 40.0 * (j + 1)
            if num_keypoints:
                keypoints[i, j, :, 0] = rng.uniform(x1, x1 + w, num_keypoints)
                keypoints[i, j, :, 1] = rng.uniform(y1, y1 + h, num_keypoints)
                keypoints[i, j, :, 2] = 2
    batch = {"images": images, "image_sizes": np.full((b, 2), size, np.int32),
             "gt_boxes": boxes, "gt_classes": classes, "gt_masks": masks}
    if num_keypoints:
        batch["gt_keypoints"] = keypoints
    return batch


def assert_every_weight_gets_a_gradient(model, batch):
    """The summed training losses of ``batch`` give every trainable weight a gradient that is
    present and not all zero (names the weights that fail)."""
    import tensorflow as tf  # test support only; the module's other helpers need no TF

    with tf.GradientTape() as tape:
        outputs = model(batch, training=True)
        total = tf.add_n(list(model.compute_losses(outputs).values()))
    grads = tape.gradient(total, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing, missing
    zero = [v.path for v, g in zip(model.trainable_variables, grads)
            if float(tf.reduce_max(tf.abs(g))) == 0.0]
    assert not zero, zero
