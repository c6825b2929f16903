"""Benchmark: YOLACT-R50 at 550 or Mask R-CNN R50-FPN at 800 through each deployment path,
same photo, same threads, in one run.

    python bench/export_runtimes.py [--model yolact|maskrcnn] [--threads 2] [--repeats 5]
        [--photo coffee] [--workdir /tmp/kmr_export_bench] [--score-threshold 0.05]
        [--paths ...] [--prepare-only]

Model: ``keras_maskrcnn.build_model`` of ``configs/yolact_r50_fpn_coco.yaml`` (``--model
yolact``) or ``configs/maskrcnn_r50_fpn_coco.yaml`` (``maskrcnn``) with random weights
(``keras.utils.set_random_seed(0)``; nothing downloaded), saved once as
``WORKDIR/MODEL.weights.h5`` and exported from it with ``keras_maskrcnn.export`` (ONNX via
tf2onnx, LiteRT via TensorFlow's converter, float32 and ``--quantize dynamic``). A random Mask
R-CNN keeps every detection above a 0 threshold, so ``--score-threshold 0`` gives every path
100 detections through the mask head (the default 0.05 may give none). Paths:
    tf_detect         ``model.detect([photo])`` with the CPU kernels (``model.accel`` auto: on)
    tf_detect_plain   the same with ``model.accel=off`` (plain Keras layers)
    onnxruntime       the .onnx file in ONNX Runtime (CPUExecutionProvider, intra-op threads)
    litert            the .tflite file in the LiteRT interpreter (``num_threads``, XNNPACK)
    litert_int8       the dynamic-range quantised .tflite
    torchvision       (maskrcnn only) torchvision's ``maskrcnn_resnet50_fpn``, random weights,
                      ``box_score_thresh`` = the score threshold, eval mode under
                      ``torch.inference_mode()``, ``torch.set_num_threads(--threads)``
Each path runs in its own worker process (``--threads`` for TF's intra- and inter-op pools,
ONNX Runtime's intra-op pool, LiteRT's ``num_threads``): one untimed warm-up call, then
``--repeats`` timed calls on the bundled uint8 photo; timed is the whole call, pre- and
post-processing included (the files output masks at prototype resolution (YOLACT) or 28x28
in each box (Mask R-CNN); ``detect`` and torchvision also paste them into the photo).
Printed: median, min, max ms and images/s per path, the detections each returned and the
ratio of each path's median to ``tf_detect``'s. torchvision has no YOLACT.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # --model -> (config, score threshold key)
    "yolact": ("yolact_r50_fpn_coco.yaml", "model.yolact.score_threshold"),
    "maskrcnn": ("maskrcnn_r50_fpn_coco.yaml", "model.roi_heads.score_threshold"),
}
PATHS = ("tf_detect", "tf_detect_plain", "onnxruntime", "litert", "litert_int8", "torchvision")


def config_path(args):
    return str(ROOT / "configs" / MODELS[args.model][0])


def overrides(args, plain=False):
    items = [f"{MODELS[args.model][1]}={args.score_threshold}"]
    return items + (["model.accel=off"] if plain else [])


def file_path(args, path):
    """The weights (path None) or exported file of a path, in ``args.workdir``."""
    suffix = {None: ".weights.h5", "onnxruntime": ".onnx", "litert": ".tflite",
              "litert_int8": "_int8.tflite"}[path]
    return os.path.join(args.workdir, args.model + suffix)


def prepare(args):
    """Weights and exported files in ``args.workdir`` (made once; reused when present)."""
    os.makedirs(args.workdir, exist_ok=True)
    weights = file_path(args, None)
    if not os.path.exists(weights):
        import keras

        import keras_maskrcnn
        keras.utils.set_random_seed(0)
        model = keras_maskrcnn.build_model(keras_maskrcnn.load_config(config_path(args)))
        model.save_weights(weights)
    from keras_maskrcnn.export import main as export_main
    files = {"onnxruntime": ("onnx", []), "litert": ("litert", []),
             "litert_int8": ("litert", ["--quantize", "dynamic"])}
    for path, (fmt, extra) in files.items():
        output = file_path(args, path)
        if path in args.paths and not os.path.exists(output):
            start = time.perf_counter()
            export_main(["--config", config_path(args), "--weights", weights, "--output",
                         output, "--format", fmt, "--set", *overrides(args)] + extra)
            print(f"exported {output} in {time.perf_counter() - start:.0f} s", flush=True)
    return weights


def torchvision_runner(args):
    """torchvision's Mask R-CNN R50-FPN, random weights, ``args.threads`` threads."""
    import torch
    import torchvision
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=args.score_threshold).eval()

    def call(photo):
        with torch.inference_mode():
            image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255.0
            return len(model([image])[0]["scores"])
    return call


def runner(args):
    """(call(photo) -> number of detections) for ``args.worker``."""
    import numpy as np
    if args.worker == "torchvision":
        return torchvision_runner(args)
    if args.worker.startswith("tf_detect"):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        import keras_maskrcnn
        cfg = keras_maskrcnn.load_config(config_path(args),
                                         overrides(args, args.worker.endswith("plain")))
        model = keras_maskrcnn.build_model(cfg)
        model.load_weights(file_path(args, None))
        return lambda photo: len(model.detect([photo])[0]["scores"])
    from keras_maskrcnn.export.runtimes import litert_runner, onnx_runner
    make = onnx_runner if args.worker == "onnxruntime" else litert_runner
    run = make(file_path(args, args.worker), args.threads)
    return lambda photo: int(np.asarray(run(photo)["num_detections"])[0])


def worker(args):
    call = runner(args)  # first: torch must be imported before TensorFlow (tests/conftest.py)
    from keras_maskrcnn.predict import read_image
    photo = read_image(ROOT / "keras_maskrcnn" / "assets" / f"{args.photo}.jpg")
    start = time.perf_counter()
    call(photo)
    warmup = time.perf_counter() - start
    times, counts = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        counts.append(call(photo))
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"ms": times, "detections": counts, "warmup_s": warmup,
                      "photo": list(photo.shape)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolact", choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photo", default="coffee", choices=("coffee", "astronaut"))
    parser.add_argument("--workdir", default="/tmp/kmr_export_bench")
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the weights and files, time nothing")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.model == "yolact" and "torchvision" in args.paths:
        args.paths.remove("torchvision")  # torchvision has no YOLACT
    prepare(args)
    if args.prepare_only:
        return None
    medians = {}
    for path in args.paths:  # one after the other: no two paths share the cores
        command = [sys.executable, __file__, "--worker", path, "--model", args.model,
                   "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--photo", args.photo, "--workdir",
                   args.workdir, "--score-threshold", str(args.score_threshold)]
        lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(lines.strip().splitlines()[-1])
        ms = result["ms"]
        median = medians[path] = statistics.median(ms)
        print(f"{path:16s} median {median:6.0f} ms ({1e3 / median:5.2f} images/s), min "
              f"{min(ms):.0f}, max {max(ms):.0f}; detections {result['detections']}; warm-up "
              f"{result['warmup_s']:.1f} s; photo {result['photo']}", flush=True)
    if "tf_detect" in medians:
        print("ratio to tf_detect: " + ", ".join(
            f"{path} {m / medians['tf_detect']:.2f}" for path, m in medians.items()))
    print(f"{args.model}, {args.threads} threads, {args.repeats} runs each, score threshold "
          f"{args.score_threshold}")


if __name__ == "__main__":
    main()
