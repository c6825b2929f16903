"""Running the ONNX / LiteRT files in their own runtimes, with ``detect``'s results.

``onnx_runner(path)`` / ``litert_runner(path)``: ``run(image) -> {output name: array}`` for a
(H0, W0, 3) uint8 RGB image (``export.image_graph``'s outputs, batch of one).
``file_detections(postprocessor, outputs, image_shape)``: those outputs as ``model.detect``
returns them (the first ``num_detections`` rows, masks pasted into the image by the model's
postprocessor). ``FileDetector(model, run)``: the model with ``detect`` answered by the file,
so that ``evaluation.evaluate_model`` (COCO metrics) and anything else that calls ``detect``
measure the exported file (bench/litert_int8_accuracy.py, tests/export).
"""
import numpy as np


def onnx_runner(path, threads=None):
    """``run(image)`` of an .onnx file in ONNX Runtime (CPU; ``threads`` intra-op threads)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda image: dict(zip(names, session.run(None, {"images": image[None]})))


def litert_runner(path, threads=None):
    """``run(image)`` of a .tflite file in the LiteRT interpreter (its ``serving_images``
    signature, which resizes the input to each image; ``threads``: ``num_threads``)."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_maskrcnn.export.litert import SIGNATURE
    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner(SIGNATURE)
    return lambda image: runner(images=image[None])


def file_detections(postprocessor, outputs, image_shape):
    """A file's outputs for one image -> ``detect``'s dict.

    Returns:
        boxes (n, 4), scores (n,), labels (n,) dataset ids, masks (n, H0, W0) bool (pasted
        by ``postprocessor.paste_masks``: RoI masks or image masks), keypoints (n, Kp, 3).
    """
    n = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    result = {"boxes": np.asarray(outputs["boxes"])[0, :n],
              "scores": np.asarray(outputs["scores"])[0, :n],
              "labels": np.asarray(outputs["classes"])[0, :n]}
    if "masks" in outputs:
        masks = postprocessor.paste_masks(np.asarray(outputs["masks"])[:, :n],
                                          np.asarray(outputs["boxes"])[:, :n],
                                          np.array([image_shape[:2]], np.int32))
        result["masks"] = np.asarray(masks[0])
    if "keypoints" in outputs:
        result["keypoints"] = np.asarray(outputs["keypoints"])[0, :n]
    return result


class FileDetector:
    """``model`` whose ``detect`` runs an exported file (``run``, e.g. ``litert_runner``);
    every other attribute is the model's (its postprocessor, category ids, heads)."""

    def __init__(self, model, run):
        self.model, self.run = model, run

    def detect(self, images):
        """List of (H0, W0, 3) uint8 images -> list of ``detect`` dicts, one file call each."""
        postprocessor = self.model.postprocessor
        return [file_detections(postprocessor, self.run(np.asarray(image)), image.shape)
                for image in images]

    def __getattr__(self, name):
        return getattr(self.model, name)
