"""Exports of a trained detector: SavedModel (TF Serving), ONNX (ONNX Runtime, TensorRT,
OpenVINO) and LiteRT (formerly TFLite: phones, edge boxes).

    python -m keras_maskrcnn.export --format saved_model|onnx|litert --device cpu|gpu \
        --config C --weights W.weights.h5 --output PATH [--full-masks] [--category-ids ...]

Every format runs the model's ``preprocessor`` inside the graph and maps its outputs with the
model's ``postprocessor`` (``keras_maskrcnn.postprocessing.Postprocessor.serving_outputs``),
so each one returns what ``model.detect`` returns, as padded tensors:
    * ``saved_model`` (``export.saved_model``): a directory with the signatures
      ``serving_default`` (encoded image bytes, any sizes) and ``serving_images`` (a uint8
      batch of one size).
    * ``onnx`` (``export.onnx``, tf2onnx) and ``litert`` (``export.litert``, TensorFlow's
      LiteRT converter): one file with one input ``images`` uint8 (1, H, W, 3), H and W
      dynamic, and the outputs of ``serving_images`` (``export.image_graph``).
``--device``: "cpu" builds the model with the CPU kernels (``model.accel``), "gpu" with the
plain Keras layers (a SavedModel for a GPU server). ONNX and LiteRT files always use the plain
layers: their runtimes bring their own kernels.
"""
from keras_maskrcnn.export.saved_model import (BYTES_SIGNATURE, IMAGES_SIGNATURE, export_model,
                                               parse_category_ids, serving_functions)
from keras_maskrcnn.export.command import FORMATS, main

__all__ = ["BYTES_SIGNATURE", "IMAGES_SIGNATURE", "FORMATS", "export_model", "main",
           "parse_category_ids", "serving_functions"]
