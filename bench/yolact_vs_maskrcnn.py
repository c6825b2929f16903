"""Benchmark: our YOLACT-R50 at 550 against our Mask R-CNN R50-FPN at 800, same photo, same threads.

    python bench/yolact_vs_maskrcnn.py [--threads 2] [--repeats 3] [--photo coffee]

Models: ``keras_maskrcnn.build_model`` of ``configs/yolact_r50_fpn_coco.yaml`` (550 x 550) and
of ``configs/maskrcnn_r50_fpn_coco.yaml`` (short side 800, max 1333), random weights (Keras
initialisers under ``keras.utils.set_random_seed(0)``; nothing downloaded). Both with score
threshold 0 (``model.yolact.score_threshold=0.0``, ``model.roi_heads.score_threshold=0.0``, as
bench/compare_torchvision.py does) so that both return their maximum of 100 detections and
Mask R-CNN's mask head runs on 100 RoIs; the detection counts are printed.

Each model runs in its own worker process (``tf.config.threading``: ``--threads`` intra-op and
inter-op threads), so neither holds the other's memory; the parent sends ``detect`` commands
alternately to the two workers and collects the times measured inside them. Each worker makes
one untimed warm-up call first (it traces ``model._detect_fn``). Timed: ``model.detect([photo])``
on the bundled uint8 photo (resize, network, post-processing, paste-back, to numpy). Printed:
median, min and max per model and the ratio YOLACT / Mask R-CNN of the medians (issue 12's
target: <= 0.4).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # name -> (config, overrides)
    "yolact": ("configs/yolact_r50_fpn_coco.yaml", ["model.yolact.score_threshold=0.0"]),
    "maskrcnn": ("configs/maskrcnn_r50_fpn_coco.yaml", ["model.roi_heads.score_threshold=0.0"]),
}


def worker(args):
    """Builds one model, warms it up, then answers "detect" lines on stdin with JSON lines."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    import keras_maskrcnn
    from keras_maskrcnn.predict import read_image
    keras.utils.set_random_seed(0)
    path, overrides = MODELS[args.worker]
    start = time.perf_counter()
    model = keras_maskrcnn.build_model(keras_maskrcnn.load_config(str(ROOT / path), overrides))
    build_s = time.perf_counter() - start
    photo = read_image(ROOT / "keras_maskrcnn" / "assets" / f"{args.photo}.jpg")
    start = time.perf_counter()
    model.detect([photo])
    info = {"build_s": build_s, "warmup_s": time.perf_counter() - start,
            "model": type(model).__name__, "photo": list(photo.shape)}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "detect":
            break
        start = time.perf_counter()
        out = model.detect([photo])[0]
        print(json.dumps({"ms": (time.perf_counter() - start) * 1e3,
                          "detections": len(out["boxes"]),
                          "mask_shape": list(out["masks"].shape)}), flush=True)


def start_worker(name, args):
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", name, "--threads", str(args.threads),
         "--photo", args.photo], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photo", default="coffee", choices=("coffee", "astronaut"))
    parser.add_argument("--worker", choices=tuple(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    workers = {}
    for name in MODELS:  # started one after the other: building and tracing do not overlap
        workers[name] = start_worker(name, args)
        print(f"{name}: {workers[name][1]}", flush=True)
    runs = {name: [] for name in MODELS}
    for _ in range(args.repeats):
        for name, (proc, _) in workers.items():
            proc.stdin.write("detect\n")
            proc.stdin.flush()
            runs[name].append(json.loads(proc.stdout.readline()))
    for proc, _ in workers.values():
        proc.stdin.close()
        proc.wait()
    medians = {}
    for name, results in runs.items():
        ms = [r["ms"] for r in results]
        medians[name] = statistics.median(ms)
        print(f"{name}: median {medians[name]:.0f} ms, min {min(ms):.0f}, max {max(ms):.0f}; "
              f"detections {[r['detections'] for r in results]}, masks "
              f"{results[-1]['mask_shape']}")
    print(f"ratio yolact / maskrcnn of the medians: {medians['yolact'] / medians['maskrcnn']:.3f}"
          f" ({args.repeats} alternating runs, {args.threads} threads, photo {args.photo})")


if __name__ == "__main__":
    main()
