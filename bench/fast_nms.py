"""Benchmark: YOLACT's Fast NMS against standard (greedy) per-class NMS, same candidates.

    python bench/fast_nms.py [--threads 2] [--repeats 30] [--batch 1] [--threshold-on class]

Candidates are YOLACT-like: the 19,248 anchors of a 550x550 input (P3..P7 of 69, 35, 18, 9, 5
cells, 3 square anchors each, 24..384 px), jittered as decoded boxes, and softmax scores over
81 classes (background = 0) where background dominates except around a few random objects,
whose anchors score high for the object's class. Both sides run ``ops.fast_nms`` (per-class,
score > 0.05, top_k 200 per class, IoU 0.5, 100 detections; ``--threshold-on anchor`` gates by
the anchor's best score as YOLACT's reference code does) as traced tf.functions, alternately
after a warm-up; only the suppression step differs (``method="fast"`` or ``"standard"``). The
median, min and max wall time per call, the median CPU time (all threads, less sensitive to
other processes on a shared machine) and the ratios standard / fast of the medians are printed.
"""
import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from keras_maskrcnn.ops import fast_nms

LEVELS = ((69, 24.0), (35, 48.0), (18, 96.0), (9, 192.0), (5, 384.0))  # (cells, anchor size)
IMAGE_SIZE = 550.0


def yolact_anchors():
    """(19248, 4) xyxy anchors: row-major over (y, x), then 3 square anchors per cell."""
    anchors = []
    for cells, size in LEVELS:
        centres = (np.arange(cells) + 0.5) / cells * IMAGE_SIZE
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # (cells, cells) each
        for_cell = []
        for ratio in (1.0, 0.5, 2.0):
            side = size * np.sqrt(ratio)  # v1 weights: square anchors
            for_cell.append(np.stack([cx - side / 2, cy - side / 2,
                                      cx + side / 2, cy + side / 2], -1))
        anchors.append(np.stack(for_cell, 2).reshape(-1, 4))  # (cells, cells, 3, 4) -> (.., 4)
    return np.concatenate(anchors).astype(np.float32)


def iou_matrix(a, b):
    """(N, 4) x (M, 4) -> (N, M) IoU, NumPy."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), -1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def yolact_like_candidates(rng, batch, num_objects=8, num_classes=80):
    """boxes (B, 19248, 4) and foreground scores (B, 19248, 80), float32."""
    anchors = yolact_anchors()
    all_boxes, all_scores = [], []
    for _ in range(batch):
        sides = anchors[:, 2:] - anchors[:, :2]
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2 + rng.normal(0, 0.1, sides.shape) * sides
        sides = sides * np.exp(rng.normal(0, 0.2, sides.shape))
        boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1)
        logits = rng.normal(0, 1, (len(anchors), num_classes + 1))
        logits[:, 0] += 6.0  # background
        xy = rng.uniform(0, IMAGE_SIZE - 40, (num_objects, 2))
        objects = np.concatenate([xy, xy + rng.uniform(40, 300, (num_objects, 2))], -1)
        overlap = iou_matrix(boxes, objects)  # (N, objects)
        for j, cls in enumerate(rng.integers(1, num_classes + 1, num_objects)):
            logits[:, cls] += 12.0 * overlap[:, j]
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        all_boxes.append(boxes)
        all_scores.append(scores[:, 1:])  # drop background
    return np.stack(all_boxes).astype(np.float32), np.stack(all_scores).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threshold-on", choices=("class", "anchor"), default="class")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    boxes, scores = yolact_like_candidates(np.random.default_rng(0), args.batch)
    boxes, scores = tf.constant(boxes), tf.constant(scores)
    print(f"threads: {args.threads}, tensorflow {tf.__version__}, batch {args.batch}, "
          f"{scores.shape[1]} anchors x {scores.shape[2]} classes, "
          f"{int(tf.reduce_sum(tf.cast(scores > 0.05, tf.int32)))} scores > 0.05, "
          f"threshold on {args.threshold_on}")
    fns = {method: tf.function(lambda m=method: fast_nms(boxes, scores, method=m,
                                                         threshold_on=args.threshold_on))
           for method in ("fast", "standard")}
    for name, fn in fns.items():
        out = fn()  # warm-up (trace)
        print(f"  {name:8s} detections per image: {out['num_detections'].numpy().tolist()}")
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()["num_detections"].numpy()
            times[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    for name, t in times.items():
        print(f"  {name:8s} median {statistics.median(t):8.2f} ms  "
              f"(min {min(t):8.2f}, max {max(t):8.2f}); "
              f"CPU time median {statistics.median(cpu[name]):8.2f} ms")
    for label, values in (("", times), (" (CPU time)", cpu)):
        ratio = statistics.median(values["standard"]) / statistics.median(values["fast"])
        print(f"  ratio standard/fast{label}: {ratio:.2f}")

if __name__ == "__main__":
    main()
