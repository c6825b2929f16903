"""Benchmark: the Pillow-exact detectron2 resize against the resizes it replaced or sits beside.

    python bench/resize_detectron2.py [--threads 2] [--repeats 30] [--size 480x640]

One (H, W, 3) uint8 photo-like image (smooth gradients plus noise) resized the way
``input.resize_style: detectron2`` sizes it (short side 800, long side at most 1333: 480x640 ->
800x1067) by, each as a traced tf.function with unknown sizes (as ``detect`` and the export
run it), alternately after a warm-up:
    pil_exact     ``preprocessing.resize_image_detectron2`` = ``ops.pil_resize`` (integer taps,
                  bit for bit PIL);
    float_approx  the previous detectron2 resize: two antialiased float32 ``tf.image.resize``
                  passes rounded to uint8 in between (one level off PIL on some values);
    torchvision   ``preprocessing.resize_image`` (float bilinear, no antialias: the
                  torchvision style);
and PIL's own ``Image.resize(BILINEAR)`` (what detectron2 runs, single-threaded C) for scale.
The median, min and max wall time per call and the median CPU time are printed, plus how many
values of each differ from PIL.
"""
import argparse
import statistics
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_maskrcnn import preprocessing


def float_approx(image, size):
    """The resize_image_detectron2 of before issue 18 (kept here for the comparison)."""
    def to_uint8_values(x):
        return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)

    image = tf.cast(image, tf.float32)
    wide = to_uint8_values(tf.image.resize(image, tf.stack([tf.shape(image)[-3], size[1]]),
                                           method="bilinear", antialias=True))
    return to_uint8_values(tf.image.resize(wide, size, method="bilinear", antialias=True))


def photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 55, w))
    image = np.stack([ramp, 255 - ramp, np.roll(ramp, w // 3, 1)], -1)
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def timed(fn, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", default="480x640", help="input HxW")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    image = photo(h, w)
    out = tuple(int(v) for v in preprocessing.detectron2_output_size(h, w, 800, 1333))
    want = np.asarray(Image.fromarray(image).resize(out[::-1], Image.BILINEAR))
    spec = [tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)]
    functions = {"pil_exact": preprocessing.resize_image_detectron2,
                 "float_approx": float_approx, "torchvision": preprocessing.resize_image}
    traced = {k: tf.function(f, input_signature=spec) for k, f in functions.items()}
    batch, size = tf.constant(image[None]), tf.constant(out)
    calls = {k: (lambda f=f: f(batch, size).numpy()) for k, f in traced.items()}
    calls["PIL"] = lambda: Image.fromarray(image).resize(out[::-1], Image.BILINEAR)
    print(f"{h}x{w} -> {out[0]}x{out[1]}, {args.threads} threads, {args.repeats} repeats")
    for name, call in calls.items():
        call()  # warm-up / trace
        if name != "PIL":
            got = np.round(np.asarray(call())[0])  # torchvision style: floats, rounded
            print(f"  {name}: {int((got != want).sum())} of {want.size} values differ from "
                  "PIL (rounded)")
    results = {name: ([], []) for name in calls}
    for _ in range(args.repeats):  # alternate so that load changes hit all alike
        for name, call in calls.items():
            walls, cpus = timed(call, 1)
            results[name][0].extend(walls)
            results[name][1].extend(cpus)
    for name, (walls, cpus) in results.items():
        print(f"  {name:13s} median {1e3 * statistics.median(walls):7.1f} ms (min "
              f"{1e3 * min(walls):.1f}, max {1e3 * max(walls):.1f}), CPU "
              f"{1e3 * statistics.median(cpus):.1f} ms")


if __name__ == "__main__":
    main()
