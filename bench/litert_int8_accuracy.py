"""Benchmark: the COCO AP of a trained model through TF ``detect``, its ONNX file, its LiteRT
file and its dynamic-range quantised (int8 weights) LiteRT file, on the same validation set.

    python bench/litert_int8_accuracy.py --run runs/shapes [--workdir /tmp/kmr_int8]
        [--max-images N] [--threads 2]

``--run``: a training run directory (``config.yaml`` and ``model.weights.h5``, as
``train.py`` writes them), e.g. after ``python train.py --config configs/shapes.yaml``. The
validation split is the config's (``cli.evaluate.val_split_paths``). The model is built with
the plain Keras layers (``model.accel=off``), its files written with
``keras_maskrcnn.export`` (ONNX, LiteRT float32, LiteRT ``quantize="dynamic"``), and each path
is evaluated by ``evaluation.evaluate_model`` (COCOeval) through
``export.runtimes.FileDetector``. Printed: AP per iou type, file size and seconds per path.
"""
import argparse
import os
import time


def evaluate_paths(model, files, annotations, images, max_images, threads):
    """{path name: (metrics, seconds)} for TF detect and each exported file."""
    from keras_maskrcnn import evaluation
    from keras_maskrcnn.export.runtimes import FileDetector, litert_runner, onnx_runner
    detectors = {"tf_detect": model}
    for name, path in files.items():
        run = (onnx_runner if path.endswith(".onnx") else litert_runner)(path, threads)
        detectors[name] = FileDetector(model, run)
    results = {}
    for name, detector in detectors.items():
        start = time.perf_counter()
        metrics = evaluation.evaluate_model(detector, annotations, images,
                                            max_images=max_images, verbose=False)
        results[name] = (metrics, time.perf_counter() - start)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory (config.yaml, weights)")
    parser.add_argument("--workdir", default="/tmp/kmr_int8")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from keras_maskrcnn import builders, load_config
    from keras_maskrcnn.cli.evaluate import category_ids_of, val_split_paths
    from keras_maskrcnn.convert.weights import load_weights
    from keras_maskrcnn.export.litert import export_litert
    from keras_maskrcnn.export.onnx import export_onnx

    cfg = load_config(os.path.join(args.run, "config.yaml"), ["model.accel=off"])
    annotations, images = val_split_paths(cfg.data)
    model = builders.build_model(cfg, category_ids=category_ids_of(annotations,
                                                                   cfg.model.num_classes))
    load_weights(model, os.path.join(args.run, "model.weights.h5"))
    os.makedirs(args.workdir, exist_ok=True)
    files = {"onnxruntime": os.path.join(args.workdir, "model.onnx"),
             "litert": os.path.join(args.workdir, "model.tflite"),
             "litert_int8": os.path.join(args.workdir, "model_int8.tflite")}
    export_onnx(model, files["onnxruntime"])
    export_litert(model, files["litert"])
    export_litert(model, files["litert_int8"], quantize="dynamic")
    results = evaluate_paths(model, files, annotations, images, args.max_images, args.threads)
    for name, (metrics, seconds) in results.items():
        aps = ", ".join(f"{iou_type} AP {metrics[iou_type]['AP']:.4f}"
                        for iou_type in ("bbox", "segm", "keypoints") if iou_type in metrics)
        size = (f"{os.path.getsize(files[name]) / 2**20:.1f} MiB" if name in files
                else "weights in TF")
        print(f"{name:12s} {aps}; {metrics['info']['num_images']} images in {seconds:.0f} s; "
              f"{size}")


if __name__ == "__main__":
    main()
