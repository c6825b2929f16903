"""SavedModel export with TF Serving signatures (``keras.export.ExportArchive``).

Shape shorthand:
    B  images in a request;  H0, W0  one image's original size
    Hm, Wm  largest original height / width in the batch (full masks are padded to it)
    Hp, Wp  resized, padded model input;  D  detections per image (static)
    S  RoI mask size (28);  Kp  keypoints

    kmr export --config C [--weights W.weights.h5] --output PATH \
        [--format saved_model|onnx|litert] [--device cpu|gpu] [--full-masks] \
        [--category-ids 1,2,3 | --category-ids instances.json] [--set k=v]

Signatures (batch dimension first everywhere; TF Serving needs ``serving_default``):
    serving_default(image_bytes: tf.string [B])  JPEG / PNG / BMP / GIF bytes, any sizes.
        Each image is decoded (3 channels, first frame) and runs through the model on its own
        (``tf.map_fn``), so its result never depends on the other images of the request and
        equals ``model.detect`` on the decoded image.
    serving_images(images: tf.uint8 [B, H0, W0, 3])  RGB images of one size; one batched
        model call (same resize and padding for all, so again equal to ``model.detect`` up to
        float rounding of batched kernels).
Outputs of both (padding rows beyond ``num_detections`` are all zero):
    boxes (B, D, 4) float32 xyxy in original-image pixels; scores (B, D) float32;
    classes (B, D) int32 dataset category ids (the postprocessor's; 0 = padding);
    num_detections (B,) int32; original_sizes (B, 2) int32 decoded (H0, W0);
    masks (B, D, S, S) float32 mask probabilities inside each box (the TF Object Detection
        API's "detection_masks" convention: paste them into the box, e.g. with
        ``keras_maskrcnn.ops.masks.paste_masks``), when the model has a mask head; YOLACT
        (``mask_type == "image"``): (B, D, Hp, Wp) probabilities over the whole resized image
        at prototype resolution, Hp and Wp static (its fixed square input) (resize them to
        the original image, e.g. with ``keras_maskrcnn.ops.masks_to_image``), and boxes
        integer-valued as its ``detect``;
    full_masks (B, D, Hm, Wm) uint8 {0, 1} masks pasted into the image
        (``Postprocessor.paste_masks``: the postprocessor's paste style and threshold; YOLACT:
        resized to the image, >), only when exported with ``include_full_masks``. For ``serving_default`` with images of different sizes the
        canvas is the largest (Hm, Wm) of the batch: image b occupies [:H0_b, :W0_b] and is
        zero beyond (crop with ``original_sizes``);
    keypoints (B, D, Kp, 3) float32 [x, y, score] in original pixels (the predictor's
        coordinates, as ``detect``: a COCO offset is the evaluation's), with a keypoint head;
        detections of a class without keypoints get (0, 0, -inf).

Preprocessing is the model's ``preprocessor`` (``keras_maskrcnn.preprocessing``) and the mapping
back its ``postprocessor`` (``Postprocessor.serving_outputs``), the same code as
``model.detect``. The SavedModel needs only TensorFlow to load and runs in the
session-based loader (``saved_model_cli run``, TF Serving).
"""
import json

import keras
import tensorflow as tf

from keras_maskrcnn import inference
from keras_maskrcnn.data import image_graph, images

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
PARALLEL_IMAGES = 4  # serving_default: images in flight at once (bounds activation memory)


def _output_dtypes(model):
    """dtype of each per-image model output (``tf.map_fn``'s fn_output_signature)."""
    dtypes = {"boxes": tf.float32, "scores": tf.float32, "classes": tf.int32,
              "num_detections": tf.int32, "image_sizes": tf.int32, "original_sizes": tf.int32}
    if inference.has_masks(model):
        dtypes["masks"] = tf.float32
    if inference.has_keypoints(model):
        dtypes["keypoints"] = tf.float32
    return dtypes


def image_mask_shape(model):
    """(D, Hp, Wp) of one image's image-sized masks when every input has one size (YOLACT's
    fixed square), else None. ``tf.map_fn`` needs it: an empty request stacks no element, and
    the graph alone leaves the prototype size unknown. One inference pass on a zero image."""
    p = model.preprocessor
    if inference.mask_type(model) != "image" or p.policy != "fixed_square":
        return None
    side = -(-p.min_size // p.size_divisor) * p.size_divisor  # the padded square
    outputs = model({"images": tf.zeros([1, side, side, 3]),
                     "image_sizes": tf.constant([[p.min_size, p.min_size]], tf.int32)},
                    training=False)
    return tuple(outputs["masks"].shape[1:])


def model_runner(model):
    """``run(images) -> (outputs, image_sizes)``: preprocessor + inference pass on (B, H0, W0,
    3) images of one size; image masks get their static shape where it is known."""
    preprocessor, mask_shape = model.preprocessor, image_mask_shape(model)

    def run(images):
        inputs, image_sizes = preprocessor(images, portable=model.portable)
        outputs = model({"images": inputs, "image_sizes": image_sizes}, training=False)
        if mask_shape is not None:
            outputs = dict(outputs, masks=tf.ensure_shape(outputs["masks"], (None,) + mask_shape))
        return outputs, image_sizes

    return run, mask_shape


def serving_functions(model, include_full_masks=False,
                      max_image_pixels=images.DEFAULT_MAX_IMAGE_PIXELS):
    """The two signature bodies (plain Python functions; ``export_model`` traces them).
    ``serve_image_bytes`` decodes as ``data.images`` (``data.image_graph``) and refuses a
    request naming the index of an image that is unreadable, over ``max_image_pixels``
    (from its header, before decoding) or undecodable.

    Returns:
        (serve_image_bytes, serve_images): ``serve_image_bytes(image_bytes)`` takes tf.string
        (B,) encoded images, ``serve_images(images)`` (B, H0, W0, 3) uint8; both return the
        output dict of the module docstring (``model.postprocessor.serving_outputs``).
    """
    postprocessor = model.postprocessor
    run_model, mask_shape = model_runner(model)

    def serve_images(images):
        outputs, image_sizes = run_model(images)
        shape = tf.shape(images)
        original_sizes = tf.tile(shape[1:3][None], [shape[0], 1])  # (B, 2)
        return postprocessor.serving_outputs(outputs, image_sizes, original_sizes,
                                             include_full_masks)

    dtypes = _output_dtypes(model)
    signature = dict(dtypes)  # masks: with their static shape where known (an empty request)
    if mask_shape is not None:
        signature["masks"] = tf.TensorSpec(mask_shape, tf.float32)

    def one_image(data):
        image = image_graph.decode_image_tensor(data)  # (H0, W0, 3) as data.images reads it
        outputs, image_sizes = run_model(image[None])
        outputs = dict(outputs, image_sizes=image_sizes, original_sizes=tf.shape(image)[None, :2])
        return {k: tf.cast(outputs[k][0], dtype) for k, dtype in dtypes.items()}  # drop B = 1

    def serve_image_bytes(image_bytes):
        checked = image_graph.check_image_batch(image_bytes, max_image_pixels)  # names index
        with tf.control_dependencies([checked]):
            image_bytes = tf.identity(image_bytes)
        per_image = tf.map_fn(one_image, image_bytes, fn_output_signature=signature,
                              parallel_iterations=PARALLEL_IMAGES)  # dict of (B, ...)
        image_sizes = per_image.pop("image_sizes")
        original_sizes = per_image.pop("original_sizes")
        return postprocessor.serving_outputs(per_image, image_sizes, original_sizes,
                                             include_full_masks)

    return serve_image_bytes, serve_images


def check_exportable(model, include_full_masks=False):
    """Raises ValueError for full masks without masks, or categories of the wrong length."""
    if include_full_masks and not inference.has_masks(model):
        raise ValueError("include_full_masks needs a model with a mask head")
    model.postprocessor.check_num_classes(model.num_classes)


def export_model(model, output_dir, include_full_masks=False,
                 max_image_pixels=images.DEFAULT_MAX_IMAGE_PIXELS):
    """Writes a SavedModel with the ``serving_default`` and ``serving_images`` signatures.

    Args:
        model: a built ``MaskRCNN`` / ``YOLACT`` (weights loaded).
        output_dir: SavedModel directory to write.
        include_full_masks: also output ``full_masks`` (B, D, Hm, Wm) uint8 (needs a mask
            head; large: D full-size masks per image).
        max_image_pixels: ``serving_default`` refuses larger images (``input.max_image_pixels``).

    Returns:
        ``output_dir``. The SavedModel loads with ``tf.saved_model.load`` without keras or
        keras_maskrcnn, and in the session-based loader (TF Serving, ``saved_model_cli``).
    """
    check_exportable(model, include_full_masks)
    serve_image_bytes, serve_images = serving_functions(model, include_full_masks,
                                                        max_image_pixels)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(BYTES_SIGNATURE, serve_image_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(IMAGES_SIGNATURE, serve_images,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                        name="images")])
    archive.write_out(output_dir, verbose=False)
    return output_dir


def parse_category_ids(value):
    """``--category-ids``: "1,2,3" or a COCO json whose categories, sorted by id, are used."""
    if value is None:
        return None
    if value.endswith(".json"):
        with open(value, encoding="utf-8") as f:
            categories = json.load(f)["categories"]
        return sorted(int(c["id"]) for c in categories)
    return [int(v) for v in value.split(",") if v.strip()]
