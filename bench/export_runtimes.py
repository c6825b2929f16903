"""Benchmark: YOLACT-R50 at 550 through each deployment path, same photo, same threads.

    python bench/export_runtimes.py [--threads 2] [--repeats 5] [--photo coffee]
        [--workdir /tmp/kmr_export_bench] [--score-threshold 0.05] [--paths ...]

Model: ``keras_maskrcnn.build_model`` of ``configs/yolact_r50_fpn_coco.yaml`` with random
weights (``keras.utils.set_random_seed(0)``; nothing downloaded), saved once as
``WORKDIR/yolact.weights.h5`` and exported from it with ``keras_maskrcnn.export`` (ONNX via
tf2onnx, LiteRT via TensorFlow's converter, float32 and ``--quantize dynamic``). Paths:
    tf_detect         ``model.detect([photo])`` with the CPU kernels (``model.accel`` auto: on)
    tf_detect_plain   the same with ``model.accel=off`` (plain Keras layers)
    onnxruntime       the .onnx file in ONNX Runtime (CPUExecutionProvider, intra-op threads)
    litert            the .tflite file in the LiteRT interpreter (``num_threads``, XNNPACK)
    litert_int8       the dynamic-range quantised .tflite
Each path runs in its own worker process (``--threads`` for TF's intra- and inter-op pools,
ONNX Runtime's intra-op pool, LiteRT's ``num_threads``): one untimed warm-up call, then
``--repeats`` timed calls on the bundled uint8 photo; timed is the whole call, pre- and
post-processing included (the files output image masks at prototype resolution; ``detect``
also resizes them to the photo). Printed: median, min, max ms and images/s per path, and the
detections each returned. torchvision has no YOLACT: its Mask R-CNN comparison is
bench/compare_torchvision.py.
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
CONFIG = str(ROOT / "configs" / "yolact_r50_fpn_coco.yaml")
PATHS = ("tf_detect", "tf_detect_plain", "onnxruntime", "litert", "litert_int8")


def overrides(args, plain=False):
    items = [f"model.yolact.score_threshold={args.score_threshold}"]
    return items + (["model.accel=off"] if plain else [])


def prepare(args):
    """Weights and exported files in ``args.workdir`` (made once; reused when present)."""
    os.makedirs(args.workdir, exist_ok=True)
    weights = os.path.join(args.workdir, "yolact.weights.h5")
    if not os.path.exists(weights):
        import keras

        import keras_maskrcnn
        keras.utils.set_random_seed(0)
        keras_maskrcnn.build_model(keras_maskrcnn.load_config(CONFIG)).save_weights(weights)
    from keras_maskrcnn.export import main as export_main
    files = {"onnxruntime": ("onnx", "yolact.onnx", []),
             "litert": ("litert", "yolact.tflite", []),
             "litert_int8": ("litert", "yolact_int8.tflite", ["--quantize", "dynamic"])}
    for path, (fmt, name, extra) in files.items():
        output = os.path.join(args.workdir, name)
        if path in args.paths and not os.path.exists(output):
            start = time.perf_counter()
            export_main(["--config", CONFIG, "--weights", weights, "--output", output,
                         "--format", fmt, "--set", *overrides(args)] + extra)
            print(f"exported {output} in {time.perf_counter() - start:.0f} s", flush=True)
    return weights


def runner(args):
    """(call(photo) -> number of detections) for ``args.worker``."""
    import numpy as np
    if args.worker.startswith("tf_detect"):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        import keras_maskrcnn
        cfg = keras_maskrcnn.load_config(CONFIG, overrides(args, args.worker.endswith("plain")))
        model = keras_maskrcnn.build_model(cfg)
        model.load_weights(os.path.join(args.workdir, "yolact.weights.h5"))
        return lambda photo: len(model.detect([photo])[0]["scores"])
    if args.worker == "onnxruntime":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(os.path.join(args.workdir, "yolact.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def call(photo):
            out = dict(zip(names, session.run(None, {"images": photo[None]})))
            return int(np.asarray(out["num_detections"])[0])
        return call
    from ai_edge_litert.interpreter import Interpreter
    name = "yolact_int8.tflite" if args.worker == "litert_int8" else "yolact.tflite"
    run = Interpreter(model_path=os.path.join(args.workdir, name),
                      num_threads=args.threads).get_signature_runner("serving_images")
    return lambda photo: int(run(images=photo[None])["num_detections"][0])


def worker(args):
    from keras_maskrcnn.predict import read_image
    photo = read_image(ROOT / "keras_maskrcnn" / "assets" / f"{args.photo}.jpg")
    call = runner(args)
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photo", default="coffee", choices=("coffee", "astronaut"))
    parser.add_argument("--workdir", default="/tmp/kmr_export_bench")
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    prepare(args)
    for path in args.paths:  # one after the other: no two paths share the cores
        command = [sys.executable, __file__, "--worker", path, "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--photo", args.photo, "--workdir",
                   args.workdir, "--score-threshold", str(args.score_threshold)]
        lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(lines.strip().splitlines()[-1])
        ms = result["ms"]
        median = statistics.median(ms)
        print(f"{path:16s} median {median:6.0f} ms ({1e3 / median:5.2f} images/s), min "
              f"{min(ms):.0f}, max {max(ms):.0f}; detections {result['detections']}; warm-up "
              f"{result['warmup_s']:.1f} s; photo {result['photo']}", flush=True)
    print(f"{args.threads} threads, {args.repeats} runs each, score threshold "
          f"{args.score_threshold}")


if __name__ == "__main__":
    main()
