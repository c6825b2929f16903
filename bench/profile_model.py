"""Profile our model with the TensorFlow profiler: a TensorBoard trace plus a table of where
the time goes (per op type and per layer), for inference or for one training step.

    python bench/profile_model.py [--arch maskrcnn|keypoint_rcnn] [--task infer|train]
        [--size 512] [--steps 2] [--threads 2] [--logdir /tmp/keras_maskrcnn_profile] [--top 20]

The model is built from configs/<arch>_r50_fpn_coco.yaml with random weights and
``score_threshold 0`` (so 100 detections run through the mask / keypoint head, as in
bench/compare_torchvision.py); the cost of the ops does not depend on the weights.
Inference: ``model.detect`` on skimage's astronaut at short side ``--size``. Training: one
``train_on_batch`` on the astronaut and coffee photos with six box/mask/keypoint GT each, padded
as the training pipeline pads them (one orientation, padded to the batch's largest image rounded
up to size_divisor: 512x768 at 512; GT rows to the batch's largest count). Two untimed warm-up
calls trace and compile, then ``--steps`` calls run under ``tf.profiler.experimental``.

Open the trace with ``tensorboard --logdir <logdir>`` (Profile tab; needs the
``tensorboard-plugin-profile`` package). The printed tables sum the op events of the trace's
host plane: "op ms" is summed over threads, so it can exceed the wall time when ops overlap.
"""
import argparse
import collections
import glob
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GT_PER_IMAGE, NUM_KEYPOINTS = 6, 17


def build(arch, size):
    from keras_maskrcnn import build_model, config
    path = ROOT / "configs" / f"{arch}_r50_fpn_coco.yaml"
    overrides = ["model.roi_heads.score_threshold=0.0", f"input.min_size_test={size}",
                 f"input.max_size={int(size * 1333 / 800)}", f"input.min_size_train=[{size}]"]
    cfg = config.load_config(str(path), overrides=overrides)
    return build_model(cfg), cfg


def training_batch(model, cfg, arch, size):
    """Two photos resized to short side ``size``, padded as the pipeline pads them, 6 GT each."""
    import numpy as np
    import skimage.data
    from keras_maskrcnn.preprocessing import padded_size, resize_image, shorter_side_size
    rng = np.random.default_rng(0)
    s = model.preprocessor
    images = []
    for name in ("astronaut", "coffee"):
        photo = getattr(skimage.data, name)()
        h, w = (int(v) for v in shorter_side_size(*photo.shape[:2], size, s.max_size)[:2])
        images.append(resize_image(photo, (h, w)).numpy())
    # both photos are landscape (or square): one batch, padded to its largest image
    hp, wp = (int(v) for v in padded_size(max(im.shape[0] for im in images),
                                          max(im.shape[1] for im in images), s.size_divisor))
    b, m = len(images), GT_PER_IMAGE  # GT rows padded to the batch's largest count
    out = {"images": np.zeros((b, hp, wp, 3), np.float32),
           "image_sizes": np.array([im.shape[:2] for im in images], np.int32),
           "gt_boxes": -np.ones((b, m, 4), np.float32), "gt_classes": -np.ones((b, m), np.int32)}
    if cfg.model.mask_head.enabled:
        out["gt_masks"] = np.zeros((b, m, hp, wp), np.uint8)
    if cfg.model.keypoint_head.enabled:
        out["gt_keypoints"] = -np.ones((b, m, NUM_KEYPOINTS, 3), np.float32)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        out["images"][i, :h, :w] = im
        wh = rng.uniform(0.15, 0.5, (GT_PER_IMAGE, 2)) * [w, h]
        xy = rng.uniform(0, 1, (GT_PER_IMAGE, 2)) * ([w, h] - wh)
        boxes = np.concatenate([xy, xy + wh], 1)
        out["gt_boxes"][i, :GT_PER_IMAGE] = boxes
        out["gt_classes"][i, :GT_PER_IMAGE] = rng.integers(1, cfg.model.num_classes,
                                                           GT_PER_IMAGE)
        for j, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            if "gt_masks" in out:
                out["gt_masks"][i, j, y1:y2, x1:x2] = 1
            if "gt_keypoints" in out:
                kp = out["gt_keypoints"][i, j]
                kp[:, 0] = rng.uniform(x1, x2, NUM_KEYPOINTS)
                kp[:, 1] = rng.uniform(y1, y2, NUM_KEYPOINTS)
                kp[:, 2] = 2
    return out


def op_events(logdir):
    """(op name, op type, duration ms) of every TF op event of the newest trace's host plane."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    path = max(glob.glob(os.path.join(logdir, "plugins/profile/*/*.xplane.pb")),
               key=os.path.getmtime)
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                meta = plane.event_metadata[event.metadata_id]
                if ":" in meta.name and meta.display_name:  # "scope/op:Type" kernels
                    yield meta.name.rsplit(":", 1)[0], meta.display_name, event.duration_ps / 1e9


def layer_of(op_name):
    """The model layer an op belongs to: the first name scope below the model's own."""
    parts = [p for p in op_name.split("/") if p]
    parts = [p for p in parts if not p.startswith(("__inference", "StatefulPartitioned"))]
    suffix = ""
    if parts and parts[0] == "gradient_tape":  # backward pass of the layer below
        parts, suffix = parts[1:], " (backward)"
    if len(parts) >= 3 and parts[0].startswith("mask_rcnn"):
        return "/".join(parts[1:3]) + suffix
    return ("/".join(parts[:2]) if len(parts) > 1 else "(top level)") + suffix


def print_table(title, totals, wall_ms, top):
    total = sum(totals.values())
    print(f"\n{title}: op time {total:.0f} ms per step (wall {wall_ms:.0f} ms)")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:9.1f} ms  {100 * ms / total:5.1f} %  {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("maskrcnn", "keypoint_rcnn"), default="maskrcnn")
    parser.add_argument("--task", choices=("infer", "train"), default="infer")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inter-op", type=int, default=None, help="default: --threads")
    parser.add_argument("--logdir", default="/tmp/keras_maskrcnn_profile")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op or args.threads)
    import skimage.data

    from keras_maskrcnn import training
    model, cfg = build(args.arch, args.size)
    if args.task == "infer":
        photo = skimage.data.astronaut()
        step = lambda: model.detect([photo])  # noqa: E731
    else:
        inputs = {k: tf.constant(v) for k, v in training_batch(model, cfg, args.arch,
                                                                args.size).items()}
        print("training input", {k: tuple(v.shape) for k, v in inputs.items()})
        model.compile(optimizer=training.SGD(1e-5, momentum=0.9), jit_compile=False)
        step = lambda: model.train_on_batch(inputs)  # noqa: E731
    for _ in range(2):
        step()
    tf.profiler.experimental.start(args.logdir)
    begin = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall_ms = (time.perf_counter() - begin) * 1e3 / args.steps
    tf.profiler.experimental.stop()
    by_type, by_layer = collections.Counter(), collections.Counter()
    for name, op_type, ms in op_events(args.logdir):
        by_type[op_type] += ms / args.steps
        by_layer[layer_of(name)] += ms / args.steps
    print_table(f"{args.arch} {args.task} @{args.size}, by op type", by_type, wall_ms, args.top)
    print_table(f"{args.arch} {args.task} @{args.size}, by layer", by_layer, wall_ms, args.top)
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB; trace: tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
