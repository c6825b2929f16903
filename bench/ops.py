"""Benchmark: our RoIAlign and batched NMS against torchvision's, same CPU threads, one run.

    python bench/ops.py [--threads 2] [--repeats 20]

RoIAlign: 1000 RoIs over a 4-level FPN (P2..P5 of an 800x1088 input, 256 channels), 7x7 and
14x14 outputs, sampling ratio 2, single-level (all RoIs on P2) and multi-level (FPN level
mapping). NMS: 4000 boxes in 80 classes, IoU 0.5, top 100. Both sides run alternately after a
warm-up; the median, min and max per call and the ratio ours/torchvision of the medians are
printed. Ours runs as a traced tf.function (graph mode), as inside the model.
"""
import argparse
import statistics
import time

import numpy as np
import torch  # before tensorflow: the reverse import order segfaults here
import torchvision

import tensorflow as tf  # noqa: E402

from keras_maskrcnn.ops.nms import batched_nms  # noqa: E402
from keras_maskrcnn.ops.roi_align import multilevel_roi_align, roi_align  # noqa: E402


def _random_boxes(rng, n, height, width, min_size=8.0, max_size=400.0):
    """(n, 4) xyxy float32 boxes of log-uniform sizes inside a height x width image."""
    size = np.exp(rng.uniform(np.log(min_size), np.log(max_size), (n, 2)))
    x1 = rng.uniform(0, width - 1, n)
    y1 = rng.uniform(0, height - 1, n)
    x2 = np.minimum(x1 + size[:, 0], width)
    y2 = np.minimum(y1 + size[:, 1], height)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def _time_alternating(fns, repeats):
    """Runs each callable once to warm up, then `repeats` rounds alternating between them."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _report(title, times):
    ours, theirs = statistics.median(times["ours"]), statistics.median(times["torchvision"])
    print(f"{title}")
    for name, t in times.items():
        print(f"  {name:12s} median {statistics.median(t):8.2f} ms  "
              f"(min {min(t):8.2f}, max {max(t):8.2f})")
    print(f"  ratio ours/torchvision: {ours / theirs:.2f}")


def bench_roi_align(rng, repeats, output_size):
    height, width, channels, num_rois = 800, 1088, 256, 1000
    feats = [rng.standard_normal((1, height // s, width // s, channels)).astype(np.float32)
             for s in (4, 8, 16, 32)]
    boxes = _random_boxes(rng, num_rois, height, width)

    tf_p2 = tf.constant(feats[0])
    tf_feats = {f"P{level}": tf.constant(f) for level, f in zip(range(2, 6), feats)}
    tf_boxes = tf.constant(boxes[None])
    single = tf.function(lambda: roi_align(tf_p2, tf_boxes, output_size, spatial_scale=0.25,
                                           sampling_ratio=2, aligned=False))
    multi = tf.function(lambda: multilevel_roi_align(tf_feats, tf_boxes, output_size,
                                                     sampling_ratio=2, aligned=False))

    th_feats = {str(i): torch.from_numpy(f.transpose(0, 3, 1, 2).copy())
                for i, f in enumerate(feats)}
    th_boxes = torch.from_numpy(boxes)
    th_rois = torch.cat([torch.zeros(num_rois, 1), th_boxes], dim=1)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, 2)

    def th_single():
        with torch.no_grad():
            torchvision.ops.roi_align(th_feats["0"], th_rois, output_size, 0.25, 2, False)

    def th_multi():
        with torch.no_grad():
            pooler(th_feats, [th_boxes], [(height, width)])

    size = f"{output_size}x{output_size}"
    _report(f"RoIAlign P2 only, {num_rois} RoIs, {channels} ch, {size}",
            _time_alternating({"ours": single, "torchvision": th_single}, repeats))
    _report(f"RoIAlign multi-level P2-P5, {num_rois} RoIs, {channels} ch, {size}",
            _time_alternating({"ours": multi, "torchvision": th_multi}, repeats))


def bench_nms(rng, repeats, num_boxes=4000, num_classes=80):
    boxes = _random_boxes(rng, num_boxes, 800, 1088, min_size=16, max_size=200)
    scores = rng.uniform(size=num_boxes).astype(np.float32)
    classes = rng.integers(0, num_classes, num_boxes).astype(np.int32)
    tf_args = (tf.constant(boxes[None]), tf.constant(scores[None]), tf.constant(classes[None]))
    ours = tf.function(lambda: batched_nms(*tf_args, iou_threshold=0.5, max_output=100))
    th_args = (torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes))

    def theirs():
        torchvision.ops.batched_nms(*th_args, 0.5)[:100]

    _report(f"batched NMS, {num_boxes} boxes, {num_classes} classes, IoU 0.5, top 100",
            _time_alternating({"ours": ours, "torchvision": theirs}, repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"threads: {args.threads}, tensorflow {tf.__version__}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}")
    rng = np.random.default_rng(0)
    for output_size in (7, 14):
        bench_roi_align(rng, args.repeats, output_size)
    bench_nms(rng, args.repeats)


if __name__ == "__main__":
    main()
