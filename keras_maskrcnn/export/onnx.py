"""ONNX export with tf2onnx (the converter the TensorFlow ecosystem uses; the ``onnx`` extra).

The graph is ``export.image_graph.image_function`` (one uint8 input ``images`` (1, H, W, 3),
dynamic H and W; the named outputs of ``serving_images``), converted at ``OPSET`` with the
model's weights frozen in. It runs in ONNX Runtime (tests/export/test_files_match_detect.py
checks its detections against ``model.detect``).
"""
import os

from keras_maskrcnn.export.image_graph import OUTPUT_ORDER, image_function, portable

OPSET = 17


def export_onnx(model, output_path, full_masks=False, opset=OPSET):
    """Writes ``model`` as an ONNX file; returns ``output_path``.

    Args:
        model: a built ``MaskRCNN`` / ``YOLACT`` (plain Keras layers: ``model.accel`` off).
        output_path: the .onnx file to write.
        full_masks: also output ``full_masks`` (1, D, H0, W0) uint8.
        opset: the ONNX opset.
    """
    try:
        import tf2onnx
    except ImportError as e:
        raise ImportError("the ONNX export needs tf2onnx: pip install "
                          "'keras-maskrcnn[onnx]'") from e
    with portable(model, "onnx"):
        serve = image_function(model, full_masks)
        concrete = serve.get_concrete_function()
        outputs = [k for k in OUTPUT_ORDER if k in concrete.structured_outputs]
        model_proto, _ = tf2onnx.convert.from_function(
            serve, input_signature=serve.input_signature, opset=opset)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    rename_outputs(model_proto, concrete, outputs)
    with open(output_path, "wb") as f:
        f.write(model_proto.SerializeToString())
    return output_path


def rename_outputs(model_proto, concrete, names):
    """Names the graph outputs after the function's output keys (tf2onnx keeps the traced
    tensor names, e.g. ``Identity_3:0``)."""
    tensor_names = {concrete.structured_outputs[k].name: k for k in names}
    graph = model_proto.graph
    for output in graph.output:
        new = tensor_names.get(output.name)
        if new is None:
            continue
        for node in graph.node:
            node.output[:] = [new if o == output.name else o for o in node.output]
            node.input[:] = [new if i == output.name else i for i in node.input]
        output.name = new
