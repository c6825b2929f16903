"""The one-input graph of the ONNX and LiteRT files: a uint8 image in, ``serving_images``'s
outputs out (``export.saved_model`` docstring), pre- and post-processing inside.

Input ``images``: uint8 (1, H0, W0, 3) RGB, H0 and W0 dynamic (one image per call: a file
for a phone or an edge box, and Mask R-CNN's resize depends on the image size).
Outputs (``model.postprocessor.serving_outputs``; D detections per image, static):
boxes (1, D, 4) float32 xyxy original pixels; scores (1, D); classes (1, D) int32 dataset
category ids (0 = padding); num_detections (1,) int32; original_sizes (1, 2) int32; masks
(1, D, S, S) RoI probabilities (Mask R-CNN) or (1, D, Hp, Wp) image probabilities at
prototype resolution (YOLACT); keypoints (1, D, Kp, 3) when present; full_masks (1, D, H0,
W0) uint8 with ``full_masks``.

``portable(model)``: while the graph is traced, the RoI poolers pool with gathers
(``ops.roi_align_gather``) instead of TensorFlow's CropAndResize / DynamicPartition, which
neither ONNX Runtime nor LiteRT has, the image is resized by gathers with TensorFlow's sample
coordinates (``ops.bilinear_resize``; ONNX's Resize derives them otherwise), and
``model.portable`` makes the model avoid loops over tensors of varying shapes (the keypoint
decoding). The sizes of the resize are integer arithmetic (``ops.size_rule``) in every graph.
"""
import contextlib

import tensorflow as tf

from keras_maskrcnn.export.saved_model import check_exportable, model_runner

INPUT_NAME = "images"
OUTPUT_ORDER = ("boxes", "scores", "classes", "num_detections", "original_sizes", "masks",
                "keypoints", "full_masks")


POOLERS = ("box_pooler", "mask_pooler", "keypoint_pooler")


def _poolers(model):
    return [p for p in (getattr(model, name, None) for name in POOLERS) if p is not None]


def check_portable(model, export_format):
    """Raises ValueError for what an ``export_format`` ("onnx" / "litert") file could not
    run: adaptive RoIAlign sampling (``sampling_ratio`` 0, detectron2's), and for LiteRT
    detectron2's resize sizes (float64 arithmetic)."""
    adaptive = [p.name for p in _poolers(model) if p.sampling_ratio == 0]
    if adaptive:
        raise ValueError(f"{export_format} export needs RoI poolers with a fixed "
                         f"sampling_ratio; {adaptive} sample adaptively (sampling_ratio 0, "
                         "detectron2's ROIAlignV2): export a SavedModel instead")
    if export_format == "litert" and model.preprocessor.detectron2_style:
        raise ValueError("litert export: input.resize_style 'detectron2' computes its sizes in "
                         "float64, which LiteRT has no builtin for; export ONNX or a SavedModel")


@contextlib.contextmanager
def portable(model, export_format):
    """The model's RoI poolers on ``implementation="gather"`` and ``model.portable`` True
    inside the block (restored after), once ``check_portable`` passes."""
    check_portable(model, export_format)
    poolers = _poolers(model)
    before = [p.implementation for p in poolers]
    for pooler in poolers:
        pooler.implementation = "gather"
    model.portable = True
    try:
        yield model
    finally:
        model.portable = False
        for pooler, implementation in zip(poolers, before):
            pooler.implementation = implementation


def input_signature():
    """[TensorSpec (1, None, None, 3) uint8 named ``images``]."""
    return [tf.TensorSpec([1, None, None, 3], tf.uint8, name=INPUT_NAME)]


def image_function(model, full_masks=False):
    """A ``tf.function`` (1, H0, W0, 3) uint8 -> {output name: tensor} (module docstring)."""
    check_exportable(model, full_masks)
    run_model, _ = model_runner(model)
    postprocessor = model.postprocessor

    @tf.function(input_signature=input_signature())
    def serve(images):
        outputs, image_sizes = run_model(images)
        original_sizes = tf.shape(images)[1:3][None]  # (1, 2)
        result = postprocessor.serving_outputs(outputs, image_sizes, original_sizes, full_masks)
        return {k: result[k] for k in OUTPUT_ORDER if k in result}

    return serve
