"""Benchmark: adaptive-sampling RoIAlign (ops.roi_align_adaptive) against torchvision's
roi_align(sampling_ratio=0), same CPU threads, one 200x272x256 map (P2 of an 800x1088 input),
1000 RoIs, 7x7 output, aligned=True.

    python bench/roi_align_adaptive.py [--threads 2] [--repeats 10]

Two box sets: "P2-sized" (sides 8..112 input pixels, the boxes detectron2's level rule sends to
P2) and "any size" (sides 8..800 input pixels, all on P2: the worst case, windows up to the
whole map). Forward and forward + backward (gradient w.r.t. the map), ours as traced
tf.functions; wall-time medians with min and max, and CPU-time medians.
"""
import argparse
import statistics
import time

import numpy as np
import torch  # before tensorflow: the reverse import order segfaults here
import torchvision

import tensorflow as tf  # noqa: E402

from keras_maskrcnn.ops.roi_align_adaptive import roi_align_adaptive  # noqa: E402


def _boxes(rng, n, height, width, min_size, max_size):
    """(n, 4) xyxy float32 boxes of log-uniform sides inside a height x width image."""
    size = np.exp(rng.uniform(np.log(min_size), np.log(max_size), (n, 2)))
    x1 = rng.uniform(0, width - 1, n)
    y1 = rng.uniform(0, height - 1, n)
    return np.stack([x1, y1, np.minimum(x1 + size[:, 0], width),
                     np.minimum(y1 + size[:, 1], height)], axis=1).astype(np.float32)


def _median_ms(fn, repeats):
    """'wall median (min-max), CPU median' of ``fn`` in ms; CPU time counts all threads and
    is steadier than wall time on a loaded machine."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(1e3 * (time.perf_counter() - start))
        cpu.append(1e3 * (time.process_time() - start_cpu))
    return (f"{statistics.median(wall):7.1f} ms ({min(wall):.1f}-{max(wall):.1f}), "
            f"CPU {statistics.median(cpu):7.1f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1, 200, 272, 256)).astype(np.float32)
    x = tf.constant(features)
    t = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous()

    @tf.function
    def forward(f, b):
        return roi_align_adaptive(f, b, 7, 1 / 4, True)

    @tf.function
    def backward(f, b):
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss = tf.reduce_sum(roi_align_adaptive(f, b, 7, 1 / 4, True))
        return tape.gradient(loss, f)

    for name, max_size in [("P2-sized", 112.0), ("any size", 800.0)]:
        boxes = _boxes(rng, 1000, 800, 1088, 8.0, max_size)
        b = tf.constant(boxes[None])
        rois = torch.from_numpy(np.concatenate([np.zeros((1000, 1), np.float32), boxes], 1))
        tg = t.clone().requires_grad_(True)

        def torch_backward():
            torchvision.ops.roi_align(tg, rois, 7, 1 / 4, 0, True).sum().backward()

        with torch.no_grad():
            torch_forward = _median_ms(
                lambda: torchvision.ops.roi_align(t, rois, 7, 1 / 4, 0, True), args.repeats)
        print(f"{name:9s} torchvision forward  {torch_forward}")
        ours = _median_ms(lambda: forward(x, b).numpy(), args.repeats)
        print(f"{name:9s} ours forward         {ours}")
        print(f"{name:9s} torchvision fwd+bwd  {_median_ms(torch_backward, args.repeats)}")
        ours = _median_ms(lambda: backward(x, b).numpy(), args.repeats)
        print(f"{name:9s} ours fwd+bwd         {ours}")


if __name__ == "__main__":
    main()
