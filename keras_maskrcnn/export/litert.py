"""LiteRT (formerly TensorFlow Lite) export with TensorFlow's converter, builtin ops only.

The graph is ``export.image_graph.image_function`` (one uint8 input ``images`` (1, H, W, 3),
dynamic H and W; the named outputs of ``serving_images``) in a SavedModel signature
``serving_images``, converted by ``tf.lite.TFLiteConverter.from_saved_model`` with
``TFLITE_BUILTINS`` only (no Select TF ops: the file runs in the plain LiteRT interpreter,
``ai_edge_litert.interpreter.Interpreter``, the ``litert`` extra). Run it through its
signature runner, which resizes the input to each image::

    runner = Interpreter(model_path="model.tflite").get_signature_runner("serving_images")
    outputs = runner(images=image[None])  # {"boxes": (1, D, 4), ...}

``quantize="dynamic"``: post-training dynamic-range quantisation (int8 weights).
"""
import os
import tempfile

import keras
import tensorflow as tf

from keras_maskrcnn.export.image_graph import image_function, portable
from keras_maskrcnn.export.saved_model import IMAGES_SIGNATURE

SIGNATURE = IMAGES_SIGNATURE  # the SavedModel's image signature, the same outputs


def export_litert(model, output_path, full_masks=False, quantize=None):
    """Writes ``model`` as a .tflite file; returns ``output_path``.

    Args:
        model: a built ``MaskRCNN`` / ``YOLACT`` (plain Keras layers: ``model.accel`` off).
        output_path: the .tflite file to write.
        full_masks: also output ``full_masks`` (1, D, H0, W0) uint8.
        quantize: None (float32) or "dynamic" (int8 weights, dynamic-range quantisation).
    """
    if quantize not in (None, "dynamic"):
        raise ValueError(f"quantize must be None or 'dynamic', got {quantize!r}")
    with portable(model, "litert"), tempfile.TemporaryDirectory() as saved:
        serve = image_function(model, full_masks)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, serve, input_signature=serve.input_signature)
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "wb") as f:
        f.write(flatbuffer)
    return output_path
