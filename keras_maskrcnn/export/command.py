"""``python -m keras_maskrcnn.export`` (``kmr export``): build, load weights, export.

    python -m keras_maskrcnn.export --config C [--weights W.weights.h5] --output PATH \
        [--format saved_model|onnx|litert] [--device cpu|gpu] [--full-masks] \
        [--category-ids 1,2,3 | instances.json] [--quantize dynamic] [--set k=v ...]

``--device cpu`` builds the model with ``model.accel`` as the config says (the CPU kernels
under "auto" on a machine without GPU); ``--device gpu`` with ``model.accel=off`` (plain Keras
layers, whose GPU kernels are the fast path). ONNX and LiteRT are always built with
``model.accel=off``: their runtimes run the graph with their own kernels, and the CPU kernels'
tensor lists and custom ops have no ONNX / LiteRT builtin. Without ``--weights`` the
``model.weights.h5`` beside ``--config`` is used (a run directory, a ``kmr convert`` output);
weights of another class count keep the class layers fresh, logged (``convert.weights``).
The stages are printed on stderr with the seconds since start.
"""
import argparse
import sys
import time

from keras_maskrcnn.builders import build_model
from keras_maskrcnn.config import add_override_argument, load_config
from keras_maskrcnn.export.saved_model import (BYTES_SIGNATURE, IMAGES_SIGNATURE, export_model,
                                               parse_category_ids)

FORMATS = ("saved_model", "onnx", "litert")
DEVICES = ("cpu", "gpu")


def accel_override(export_format, device):
    """The ``model.accel`` override of an export, or None to keep the config's."""
    if export_format != "saved_model" or device == "gpu":
        return "model.accel=off"
    return None


def export(model, export_format, output, full_masks=False, quantize=None,
           max_image_pixels=None):
    """Writes ``model`` in ``export_format`` to ``output``; returns a one-line summary.
    ``max_image_pixels``: the SavedModel's ``serving_default`` refuses larger images (None:
    ``input.max_image_pixels``' default)."""
    if export_format == "saved_model":
        kwargs = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
        export_model(model, output, include_full_masks=full_masks, **kwargs)
        return (f"wrote SavedModel to {output}: signatures {BYTES_SIGNATURE} (image_bytes: "
                f"string [None]) and {IMAGES_SIGNATURE} (images: uint8 [None, None, None, 3])")
    if export_format == "onnx":
        from keras_maskrcnn.export.onnx import export_onnx
        export_onnx(model, output, full_masks=full_masks)
    else:
        from keras_maskrcnn.export.litert import export_litert
        export_litert(model, output, full_masks=full_masks, quantize=quantize)
    return f"wrote {export_format} file {output}: input images (uint8 [1, H, W, 3])"


def parser():
    p = argparse.ArgumentParser(
        prog="python -m keras_maskrcnn.export",
        description="Export a keras-maskrcnn model: SavedModel (TF Serving), ONNX or LiteRT.")
    p.add_argument("--config", required=True, help="YAML config of the model")
    p.add_argument("--weights", default=None,
                   help=".weights.h5 file (default: model.weights.h5 next to --config, as in a "
                        "run directory or a `kmr convert` output)")
    p.add_argument("--output", required=True,
                   help="SavedModel directory, or the .onnx / .tflite file to write")
    p.add_argument("--format", default="saved_model", choices=FORMATS, dest="export_format")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="where the SavedModel will run: cpu (CPU kernels, model.accel) or gpu "
                        "(plain Keras layers); ONNX / LiteRT always use the plain layers")
    p.add_argument("--full-masks", action="store_true",
                   help="also output masks pasted into the image (export.include_full_masks)")
    p.add_argument("--category-ids", default=None,
                   help="dataset id of each class 1..K-1: '1,2,3' or a COCO json "
                        "(default: the config's model.category_ids, else identity)")
    p.add_argument("--quantize", default=None, choices=("dynamic",),
                   help="litert only: dynamic-range quantisation (int8 weights)")
    add_override_argument(p, "model.roi_heads.score_threshold=0.3")
    return p


def main(argv=None):
    from keras_maskrcnn.cli.weights import resolve_weights
    from keras_maskrcnn.convert import weights as weights_lib

    p = parser()
    args = p.parse_args(argv)
    if args.quantize and args.export_format != "litert":
        raise SystemExit("--quantize applies to --format litert only")
    overrides = list(args.set or [])
    accel = accel_override(args.export_format, args.device)
    if accel:
        overrides.append(accel)
    cfg = load_config(args.config, overrides)
    weights = resolve_weights(args.config, args.weights)
    start = time.perf_counter()

    def progress(message):  # the stages, on stderr (tracing the model takes longest)
        print(f"[{time.perf_counter() - start:5.1f} s] {message}", file=sys.stderr, flush=True)

    progress(f"building the model of {args.config}")
    model = build_model(cfg, category_ids=parse_category_ids(args.category_ids))
    if args.export_format != "saved_model":
        from keras_maskrcnn.export.image_graph import check_portable
        try:
            check_portable(model, args.export_format)
        except ValueError as e:
            p.error(str(e))
    progress(f"loading {weights}")
    try:  # another class count: the class layers are skipped, logged
        weights_lib.load_weights(model, weights)
    except (ValueError, OSError) as e:
        p.error(str(e))
    full_masks = args.full_masks or cfg.export.include_full_masks
    progress(f"tracing the model and writing {args.output}")
    summary = export(model, args.export_format, args.output, full_masks, args.quantize,
                     cfg.input.max_image_pixels)
    progress("done")
    print(summary + ("; with full_masks" if full_masks else ""))
    return args.output
