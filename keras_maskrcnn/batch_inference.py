"""Batched ``detect`` for many images (a folder, a video): one model call per group of images
that share a padded input size.

``model.detect`` (``keras_maskrcnn.inference``) runs one image per call. ``BatchDetector``
splits the same work in three traced functions: the model's preprocessor (resize, pad) on one
image; the model on a batch; the model's ``postprocessor.detections`` (back to original
pixels, masks pasted into the original image, dataset category ids) on one image of the
batch's outputs, as ``detect``. Images are grouped by their
padded input size (Hp, Wp): every image of a batch then gets exactly the padded input a
single-image ``detect`` gives it (same resize, same zero padding, the same anchors and
feature-map sizes), so the detections are ``detect``'s up to the float round-off of batched
kernels (tests/test_predict.py compares them). Under the shorter-side policy photos of one
aspect ratio share a size (e.g. every 4:3 image -> 800 x 1088), under YOLACT's square policy
every image does.

Results follow ``detect``: boxes (n, 4) xyxy in original pixels, scores (n,), labels (n,)
dataset category ids (the postprocessor's ``category_ids``), masks (n, H0, W0) bool and keypoints
(n, Kp, 3) when the model has them.

Shape shorthand: B batch; H0, W0 original size; Hp, Wp padded input size; n detections.
"""
import numpy as np
import tensorflow as tf


class BatchDetector:
    """Runs ``model`` on a stream of images in batches of at most ``batch_size``.

    Args:
        model: a built detector (``MaskRCNN`` / ``YOLACT``).
        batch_size: images per model call.
        max_pending: images held while waiting for a full group (default 2 * batch_size);
            past it the largest group runs as it is.
    """

    def __init__(self, model, batch_size=4, max_pending=None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size = model, int(batch_size)
        self.max_pending = int(max_pending or 2 * self.batch_size)
        preprocessor = model.preprocessor
        self._prepare = tf.function(
            lambda image: preprocessor(image[None]),  # (1, Hp, Wp, 3), (1, 2)
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        self._forward = tf.function(
            lambda images, sizes: model({"images": images, "image_sizes": sizes},
                                        training=False),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                             tf.TensorSpec([None, 2], tf.int32)])
        postprocessor = model.postprocessor  # keypoints in the predictor's coordinates
        self._finish = tf.function(
            lambda outputs, sizes, original: postprocessor.detections(outputs, sizes, original),
            reduce_retracing=True)

    def detect(self, images):
        """``model.detect`` for a list of images, batched: one result dict per image, in
        order."""
        results = dict(self.run(enumerate(images)))
        return [results[i][1] for i in range(len(images))]

    def run(self, items):
        """Yields ``(key, (image, result))`` for each ``(key, image)`` of ``items`` (image:
        (H0, W0, 3) uint8 RGB), as its batch completes: in input order within a size group,
        not across groups."""
        pending, count = {}, 0
        for key, image in items:
            image = _checked(image)
            inputs, sizes = self._prepare(tf.constant(image))
            group = pending.setdefault(tuple(inputs.shape[1:3]), [])
            group.append((key, image, inputs, sizes))
            count += 1
            if len(group) < self.batch_size and count < self.max_pending:
                continue
            largest = max(pending, key=lambda s: len(pending[s]))
            count -= len(pending[largest])
            yield from self._run_group(pending.pop(largest))
        for shape in list(pending):
            yield from self._run_group(pending.pop(shape))

    def _run_group(self, group):
        """One model call on a group of same-size inputs; yields (key, (image, result))."""
        images = tf.concat([g[2] for g in group], axis=0)  # (B, Hp, Wp, 3)
        sizes = tf.concat([g[3] for g in group], axis=0)  # (B, 2)
        outputs = self._forward(images, sizes)
        for i, (key, image, _, _) in enumerate(group):
            one = {k: v[i:i + 1] for k, v in outputs.items()}  # (1, ...) per output
            original = tf.constant(image.shape[:2], tf.int32)
            result = {k: v.numpy() for k, v in self._finish(one, sizes[i:i + 1],
                                                            original).items()}
            yield key, (image, result)


def _checked(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB images, got {image.dtype} array of "
                         f"shape {image.shape}")
    return image
