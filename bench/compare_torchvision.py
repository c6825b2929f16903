"""Benchmark: our whole model against torchvision's, same photos, same CPU threads.

    python bench/compare_torchvision.py [--threads 2] [--repeats 2] [--train-repeats 2]
        [--sizes 800,512] [--archs maskrcnn_resnet50_fpn,keypointrcnn_resnet50_fpn] [--quick]
        [--no-train | --no-infer] [--train-allocator default,lean]

Run time on 2 cores: 17.5 min measured with --repeats 3, about 16 min with the defaults;
--quick (one photo, 2 runs, 1 step): 3 min for --archs maskrcnn_resnet50_fpn --sizes 512, 7 min
for --archs keypointrcnn_resnet50_fpn --sizes 512 (its training step is the slow part).

Models: torchvision's ``maskrcnn_resnet50_fpn`` and ``keypointrcnn_resnet50_fpn`` built as with
a pretrained backbone (FrozenBatchNorm2d, conv1 + layer1 frozen), seeded and randomised as in
tests/integration/test_parity.py (activations O(1), peaky scores), ``box_score_thresh=0`` so
that 100 detections go through the mask / keypoint heads; ours converted from the same state_dict
with ``from_torchvision(..., overrides=["model.roi_heads.score_threshold=0.0", ...])``.

Inference, per photo (skimage.data astronaut 512x512, coffee 400x600, chelsea 300x451) and
short side (800 / max 1333, the reference; 512 / max 853): both sides take the uint8 photo and
return detections in original pixels with the masks pasted into the photo: ours
``model.detect([photo])`` (resize, pad, network, paste-back, to numpy), torchvision
``model([tensor])`` in eval mode under ``torch.inference_mode()`` (its transform, network,
postprocess with paste-back). One warm-up call per photo, then alternating runs; median, min,
max and the ratio ours / torchvision of the medians. GFLOP/s = FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` on torchvision's (untimed) warm-up forward of the
same photo (convs and matmuls of the same network; RoIAlign, NMS, resizing and pasting not
counted) / median. Ours: the first ``detect`` call (trace + run) and the trace count of
``model._detect_fn`` after all photos and a crop of a new size (one trace expected).

Training step, batch 2 (astronaut + coffee, short side 512, six synthetic GT instances each):
torchvision ``model.train()`` forward (with its transform; it pads the batch to 512x768) +
backward + ``torch.optim.SGD`` step, against ours: ``model.compile(
keras_maskrcnn.training.SGD (train.py's optimizer), jit_compile=False)`` +
``model.train_on_batch(inputs)``, with TensorFlow's oneDNN kernels on as ``train.py`` turns
them on (``TF_ENABLE_ONEDNN_OPTS=1`` unless the environment sets it; inference runs with
TensorFlow's default, off on this AMD CPU), with the inputs our tf.data pipeline
produces with its default ``data.group_by_aspect_ratio``: images float 0-255 resized and
zero-padded to the batch's largest image rounded up to 32 (512x768, as torchvision),
image_sizes, gt_* padded to the batch's largest instance count (6); ``--train-padding
pipeline,square`` adds ours without grouping (the 864x864 max_size square, gt_* padded to
``input.max_instances`` = 100 rows). Ours runs with train.py's default allocator and with
``train.py --low-memory`` (``keras_maskrcnn.accel.memory``, the worker started with glibc's
huge-page tunable as train.py restarts itself, and trimming malloc's heaps after each step as
train.py's callback does; ``--train-allocator`` picks). Same
images and GT on both sides; tiny learning rate (the step's cost does not depend on it; a
random model does not diverge). Also printed: the RoIs through the mask / keypoint head per step (torchvision: its
positives; ours: B x F', F' the most positives of an image in the batch).

Each side runs in its own worker process (one per model, size and task), so that the peak
memory (``ru_maxrss``) is that side's alone; the parent alternates commands between the
workers and collects the times, measured inside the workers. A prepare process builds and
randomises the torchvision models once, saves their state_dicts and writes the training batch.
Our workers import no torch. Inference workers are started per model and size.
"""
import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")
PHOTOS = ("astronaut", "coffee", "chelsea")
TRAIN_PHOTOS = ("astronaut", "coffee")
TRAIN_PADDING = ("pipeline",)
VERSIONS_PRINTED = []
SEED, LEARNING_RATE, GT_PER_IMAGE, NUM_KEYPOINTS = 0, 1e-5, 6, 17


def max_size_for(min_size):
    """torchvision's 800 / 1333 aspect: 512 -> 853."""
    return int(min_size * 1333 / 800)


def photos(names=PHOTOS):
    import skimage.data
    return {name: getattr(skimage.data, name)() for name in names}


def memory_mib():
    """(current RSS, peak RSS) of this process in MiB."""
    import resource
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return rss / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- torchvision side
def build_torchvision(torchvision, arch, min_size):
    """The torchvision model as its builder makes it with a pretrained backbone (FrozenBN,
    trainable layers 3), random weights, box_score_thresh 0."""
    from torchvision.models.detection import KeypointRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3)
    kwargs = dict(min_size=min_size, max_size=max_size_for(min_size), box_score_thresh=0.0)
    if arch == "maskrcnn_resnet50_fpn":
        return MaskRCNN(backbone, num_classes=91, **kwargs)
    return KeypointRCNN(backbone, num_classes=2, num_keypoints=NUM_KEYPOINTS, **kwargs)


def make_gt(rng, height, width, arch):
    """Synthetic GT in resized pixels: boxes (n, 4), labels (n,), elliptic masks (n, h, w)
    uint8, keypoints (n, 17, 3) [x, y, v] (v 2 or 0)."""
    import numpy as np
    size = rng.uniform(0.15, 0.5, (GT_PER_IMAGE, 2)) * [width, height]
    x1, y1 = rng.uniform(0, width - size[:, 0]), rng.uniform(0, height - size[:, 1])
    boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1).astype(np.float32)
    yy, xx = np.mgrid[:height, :width] + 0.5
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    masks = (((xx - cx[:, None, None]) / (size[:, 0, None, None] / 2)) ** 2
             + ((yy - cy[:, None, None]) / (size[:, 1, None, None] / 2)) ** 2) <= 1
    kx = rng.uniform(boxes[:, None, 0], boxes[:, None, 2], (GT_PER_IMAGE, NUM_KEYPOINTS))
    ky = rng.uniform(boxes[:, None, 1], boxes[:, None, 3], (GT_PER_IMAGE, NUM_KEYPOINTS))
    v = np.where(rng.uniform(size=kx.shape) < 0.8, 2.0, 0.0)
    keypoints = np.stack([kx * (v > 0), ky * (v > 0), v], -1).astype(np.float32)
    labels = (rng.integers(1, 91, GT_PER_IMAGE) if arch == "maskrcnn_resnet50_fpn"
              else np.ones(GT_PER_IMAGE, np.int64))
    return {"boxes": boxes, "labels": labels.astype(np.int64),
            "masks": masks.astype(np.uint8), "keypoints": keypoints}


def prepare(args):
    """Randomised torchvision models -> .pt + .npz state_dicts; the training batch."""
    import numpy as np
    import torch
    import torchvision
    sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]  # + support/
    import test_parity  # the randomisation of the parity tests (imports tensorflow: after torch)
    from keras_maskrcnn.preprocessing import resize_image, shorter_side_size

    torch.set_num_threads(args.threads)
    work, images = Path(args.workdir), photos()  # all three calibrate, whatever --images
    chw = {k: test_parity.to_chw(torch, v) for k, v in images.items()}
    for arch in args.archs:
        torch.manual_seed(SEED)
        model = build_torchvision(torchvision, arch, 800).eval()
        test_parity.randomise_(torch, model, list(chw.values()))
        state = model.state_dict()
        torch.save(state, work / f"{arch}.pt")
        np.savez(work / f"{arch}.npz", **{k: v.numpy() for k, v in state.items()})
    batch, rng = {}, np.random.default_rng(SEED)
    for i, name in enumerate(TRAIN_PHOTOS):
        image = images[name]
        h, w = (int(s) for s in shorter_side_size(*image.shape[:2], args.train_size,
                                                  max_size_for(args.train_size))[:2])
        batch[f"image_{i}"] = resize_image(image, (h, w)).numpy()  # (h, w, 3) float 0..255
        for arch in args.archs:
            for key, value in make_gt(rng, h, w, arch).items():
                batch[f"{arch}/{key}_{i}"] = value
    np.savez(work / "train_batch.npz", **batch)


def torchvision_worker(args):
    import numpy as np
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    model = build_torchvision(torchvision, args.arch, args.size)
    model.load_state_dict(torch.load(Path(args.workdir) / f"{args.arch}.pt", weights_only=True))
    info = {"version": f"torch {torch.__version__}, torchvision {torchvision.__version__}"}
    handlers = {}
    if args.task == "infer":
        model.eval()
        images = photos(args.images)

        def infer(image, count_flops=False):
            """One forward; ``count_flops`` (the untimed warm-up) under FlopCounterMode."""
            counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
            begin = time.perf_counter()
            with torch.inference_mode(), counter:
                out = model([torch.from_numpy(images[image]).permute(2, 0, 1).float() / 255.0])
            result = {"ms": (time.perf_counter() - begin) * 1e3,
                      "detections": len(out[0]["boxes"])}
            if count_flops:
                result["flops"] = counter.get_total_flops()
            return result
        handlers["infer"] = infer
    else:
        model.train()
        batch = np.load(Path(args.workdir) / "train_batch.npz")
        keys = ("boxes", "labels", "masks") if args.arch.startswith("mask") else \
            ("boxes", "labels", "keypoints")
        inputs = [torch.from_numpy(batch[f"image_{i}"]).permute(2, 0, 1).contiguous() / 255.0
                  for i in range(len(TRAIN_PHOTOS))]
        targets = [{k: torch.from_numpy(batch[f"{args.arch}/{k}_{i}"]) for k in keys}
                   for i in range(len(TRAIN_PHOTOS))]
        info["padded"] = [max(math.ceil(x.shape[d] / 32) * 32 for x in inputs) for d in (1, 2)]
        head_rois = []  # RoIs through the mask / keypoint head (its positives) per step
        pool = getattr(model.roi_heads, "mask_roi_pool", None) or model.roi_heads.keypoint_roi_pool
        pool.register_forward_pre_hook(lambda m, a: head_rois.append(sum(map(len, a[1]))))
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                    lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4)

        def train_step():
            begin = time.perf_counter()
            loss = sum(model(inputs, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return {"ms": (time.perf_counter() - begin) * 1e3, "loss": float(loss)}
        handlers["train_step"] = train_step
        handlers["head_rois"] = lambda: {"head_rois": head_rois[-1]}  # of the last step
    info["setup_s"] = time.perf_counter() - start
    serve(handlers, info)


# ---------------------------------------------------------------------------------- our side
def our_worker(args):
    from keras_maskrcnn.accel import memory
    if args.allocator == "lean":  # as train.py --low-memory, before TensorFlow is imported
        memory.use_lean_allocator()
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    from keras_maskrcnn import training
    from keras_maskrcnn.convert.torchvision_models import from_torchvision
    overrides = ["model.roi_heads.score_threshold=0.0", f"input.min_size_test={args.size}",
                 f"input.max_size={max_size_for(args.size)}", f"input.min_size_train=[{args.size}]"]
    start = time.perf_counter()
    # the state_dict is freed once converted, as torchvision's side frees its loaded copy
    model = from_torchvision(dict(np.load(Path(args.workdir) / f"{args.arch}.npz")), args.arch,
                             overrides=overrides)
    gc.collect()
    info = {"version": f"tensorflow {tf.__version__}, keras {keras.__version__}",
            "convert_s": time.perf_counter() - start}
    handlers = {}
    if args.task == "infer":
        images = photos(args.images)

        def infer(image, count_flops=False):  # noqa: ARG001 (torchvision's side counts)
            begin = time.perf_counter()
            out = model.detect([images[image]])[0]
            return {"ms": (time.perf_counter() - begin) * 1e3, "detections": len(out["boxes"]),
                    "traces": model._detect_fn.experimental_get_tracing_count()}

        def retrace_check():
            """detect on a photo crop of a size not seen yet; the trace count must not grow."""
            before = model._detect_fn.experimental_get_tracing_count()
            crop = np.ascontiguousarray(images[args.images[0]][:-37, :-53])
            begin = time.perf_counter()
            model.detect([crop])
            return {"ms": (time.perf_counter() - begin) * 1e3, "traces_before": before,
                    "traces_after": model._detect_fn.experimental_get_tracing_count(),
                    "crop": list(crop.shape[:2])}
        handlers.update(infer=infer, retrace_check=retrace_check)
    else:
        inputs = {k: tf.constant(v) for k, v in training_inputs(args, model).items()}
        info["padded"] = list(inputs["images"].shape[1:3])
        model.compile(optimizer=training.SGD(LEARNING_RATE, momentum=0.9, weight_decay=1e-4),
                      jit_compile=False)  # train.py's optimizer

        def train_step():
            begin = time.perf_counter()
            logs = model.train_on_batch(inputs, return_dict=True)
            if args.allocator == "lean":  # as train.py --low-memory's ReleaseFreeMemory
                memory.release_free_memory()
            return {"ms": (time.perf_counter() - begin) * 1e3, "loss": float(logs["loss"])}

        def count_head_rois():
            """B x F': the heads run on the F' slots that hold the positives (an eager training
            forward, called after the memory is read)."""
            return {"head_rois": int(np.prod(model(inputs, training=True)["fg_roi_classes"]
                                             .shape))}
        handlers.update(train_step=train_step, head_rois=count_head_rois)
    info["setup_s"] = time.perf_counter() - start
    serve(handlers, info)


def training_inputs(args, model):
    """The training batch as our pipeline pads it: ``--pad pipeline`` (the default config,
    ``data.group_by_aspect_ratio``) pads the batch to its largest image rounded up to
    size_divisor, as torchvision does, and the GT rows to its largest instance count;
    ``--pad square`` (grouping off) to the max_size square (``training_padded_sizes``' long
    side on both axes) and ``max_instances`` rows."""
    import numpy as np
    from keras_maskrcnn.convert.torchvision_models import converted_config
    from keras_maskrcnn.data.pipeline import training_padded_sizes
    batch = np.load(Path(args.workdir) / "train_batch.npz")
    s = converted_config(model).input
    images = [batch[f"image_{i}"] for i in range(len(TRAIN_PHOTOS))]
    d = s.size_divisor
    if args.pad == "square":
        hp = wp = training_padded_sizes(s)[0][1]
    else:
        hp = max(math.ceil(im.shape[0] / d) * d for im in images)
        wp = max(math.ceil(im.shape[1] / d) * d for im in images)
    counts = [len(batch[f"{args.arch}/boxes_{i}"]) for i in range(len(images))]
    # GT rows: the batch's largest count when grouped (padded per batch), else max_instances
    m, b = (s.max_instances if args.pad == "square" else max(counts)), len(images)
    out = {"images": np.zeros((b, hp, wp, 3), np.float32),
           "image_sizes": np.array([im.shape[:2] for im in images], np.int32),
           "gt_boxes": -np.ones((b, m, 4), np.float32), "gt_classes": -np.ones((b, m), np.int32)}
    masks = args.arch.startswith("mask")
    if masks:
        out["gt_masks"] = np.zeros((b, m, hp, wp), np.uint8)
    else:
        out["gt_keypoints"] = -np.ones((b, m, NUM_KEYPOINTS, 3), np.float32)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        n = len(batch[f"{args.arch}/boxes_{i}"])
        out["images"][i, :h, :w] = im
        out["gt_boxes"][i, :n] = batch[f"{args.arch}/boxes_{i}"]
        out["gt_classes"][i, :n] = batch[f"{args.arch}/labels_{i}"]
        if masks:
            out["gt_masks"][i, :n, :h, :w] = batch[f"{args.arch}/masks_{i}"]
        else:
            out["gt_keypoints"][i, :n] = batch[f"{args.arch}/keypoints_{i}"]
    return out


# ------------------------------------------------------------------------- worker protocol
def serve(handlers, info):
    """JSON lines: {"cmd": name, "args": {...}} on stdin -> one JSON result line each."""
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, not into the protocol
    handlers["memory"] = lambda: dict(zip(("rss_mib", "peak_mib"), memory_mib()))
    info["rss_mib"], info["peak_mib"] = memory_mib()
    results.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "exit":
            break
        results.write(json.dumps(handlers[msg["cmd"]](**msg.get("args", {}))) + "\n")


class Worker:
    def __init__(self, argv, log, env=None):
        self.log = log
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                                     env=env, cwd=ROOT)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            tail = Path(self.log).read_text()[-3000:]
            raise RuntimeError(f"worker {self.log} died:\n{tail}")
        return json.loads(line)

    def call(self, cmd, **kwargs):
        self.proc.stdin.write(json.dumps({"cmd": cmd, "args": kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def alternate(workers, cmd, repeats, warmup_args=None, **kwargs):
    """One warm-up call each, then ``repeats`` rounds (order swapped every round)."""
    first = {name: w.call(cmd, **kwargs, **(warmup_args or {})) for name, w in workers.items()}
    times = {name: [] for name in workers}
    for r in range(repeats):
        for name in (list(workers) if r % 2 == 0 else list(workers)[::-1]):
            times[name].append(workers[name].call(cmd, **kwargs)["ms"])
    return first, times


def fmt(times):
    return (f"{statistics.median(times) / 1e3:7.3f} s ({min(times) / 1e3:6.3f}-"
            f"{max(times) / 1e3:6.3f})")


# ----------------------------------------------------------------------------------- parent
def bench_inference(args, arch, size, work):
    common = ["--arch", arch, "--size", str(size), "--task", "infer", *common_argv(args, work)]
    workers = {"ours": Worker(["--worker", "ours", *common], work / f"ours_{arch}_{size}.log"),
               "torchvision": Worker(["--worker", "torchvision", *common],
                                     work / f"tv_{arch}_{size}.log")}
    if not VERSIONS_PRINTED:
        VERSIONS_PRINTED.append(True)
        print("versions: " + "; ".join(w.info["version"] for w in workers.values()))
    print(f"\n{arch}, short side {size} (max {max_size_for(size)}): per-image latency, "
          f"median (min-max) of {args.repeats}")
    print(f"  {'photo':10s} {'ours':26s} {'torchvision':26s} ratio  GFLOP  ours GFLOP/s "
          f"(torchvision)  detections ours/tv")
    ratios, first_calls = [], {}
    for image in args.images:
        first, times = alternate(workers, "infer", args.repeats, image=image,
                                 warmup_args={"count_flops": True})
        first_calls[image] = first["ours"]["ms"]
        ours, theirs = (statistics.median(times[k]) for k in ("ours", "torchvision"))
        ratios.append(ours / theirs)
        gflop = first["torchvision"]["flops"] / 1e9
        print(f"  {image:10s} {fmt(times['ours'])} {fmt(times['torchvision'])} "
              f"{ours / theirs:5.2f}  {gflop:5.0f}  {gflop / ours * 1e3:6.1f} "
              f"({gflop / theirs * 1e3:5.1f})          "
              f"{first['ours']['detections']}/{first['torchvision']['detections']}")
    check = workers["ours"].call("retrace_check")
    first_image = args.images[0]
    print(f"  geometric-mean ratio ours/torchvision: "
          f"{math.exp(statistics.mean(math.log(r) for r in ratios)):.2f}")
    print(f"  ours first call ({first_image}, trace + run): {first_calls[first_image] / 1e3:.1f} s;"
          f" first call of each later photo: "
          + ", ".join(f"{k} {v / 1e3:.2f} s" for k, v in list(first_calls.items())[1:]))
    print(f"  retrace check: traces of model._detect_fn after all photos "
          f"{check['traces_before']}, after a new {check['crop'][0]}x{check['crop'][1]} crop "
          f"{check['traces_after']} ({check['ms'] / 1e3:.2f} s)")
    report_memory(workers)
    return ratios


def bench_training(args, arch, work):
    common = ["--arch", arch, "--size", str(args.train_size), "--task", "train",
              *common_argv(args, work)]
    paddings = args.train_padding or TRAIN_PADDING
    # train.py turns TensorFlow's oneDNN kernels on (unless the environment says otherwise)
    onednn = {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1")}
    # train.py --low-memory restarts itself with glibc's huge-page tunable: the same here
    from keras_maskrcnn.accel.memory import environment_with_huge_pages
    lean_env = dict(onednn, GLIBC_TUNABLES=environment_with_huge_pages()["GLIBC_TUNABLES"])
    workers = {}
    for pad in paddings:
        for allocator in args.train_allocator:
            name = f"ours ({pad} padding" + (", --low-memory)" if allocator == "lean" else ")")
            workers[name] = Worker(["--worker", "ours", "--pad", pad, "--allocator", allocator,
                                    *common], work / f"ours_train_{arch}_{pad}_{allocator}.log",
                                   lean_env if allocator == "lean" else onednn)
    workers["torchvision"] = Worker(["--worker", "torchvision", *common],
                                    work / f"tv_train_{arch}.log")
    print(f"\n{arch}: one training step, batch 2 ({', '.join(TRAIN_PHOTOS)}), short side "
          f"{args.train_size}, median (min-max) of {args.train_repeats} after one warm-up step; "
          f"ours with TF_ENABLE_ONEDNN_OPTS={onednn['TF_ENABLE_ONEDNN_OPTS']} as train.py")
    first, times = alternate(workers, "train_step", args.train_repeats)
    memory = {name: w.call("memory") for name, w in workers.items()}
    theirs = statistics.median(times["torchvision"])
    head = "mask" if arch.startswith("mask") else "keypoint"
    for name, w in workers.items():
        shape = "x".join(map(str, w.info["padded"]))
        ratio = statistics.median(times[name]) / theirs
        print(f"  {name:38s} input {shape:8s} {fmt(times[name])}  ratio {ratio:4.2f}  "
              f"first step {first[name]['ms'] / 1e3:5.1f} s  loss {first[name]['loss']:.3g}  "
              f"{head} head RoIs {w.call('head_rois')['head_rois']}")
    report_memory(workers, memory)


def report_memory(workers, memory=None):
    """Peak RSS of each worker (``memory``: read before, else now); closes the workers."""
    for name, w in workers.items():
        mem = memory[name] if memory else w.call("memory")
        print(f"  memory {name}: peak RSS {mem['peak_mib']:6.0f} MiB (after imports and model "
              f"set-up {w.info['rss_mib']:5.0f} MiB; set-up {w.info['setup_s']:.1f} s)")
        w.close()


def common_argv(args, work):
    return ["--workdir", str(work), "--threads", str(args.threads),
            "--images", ",".join(args.images)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed inference runs per photo")
    parser.add_argument("--train-repeats", type=int, default=2, help="timed training steps")
    parser.add_argument("--sizes", default="800,512", help="short sides (max = side * 1333/800)")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--images", default=",".join(PHOTOS))
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--train-padding", default=None,
                        help="our training inputs, comma-separated: pipeline (default: "
                             "grouped by orientation, padded to the batch's largest image, as "
                             "torchvision), square (data.group_by_aspect_ratio=false)")
    parser.add_argument("--train-allocator", default="default,lean",
                        help="our training runs, comma-separated: default (oneDNN's pool), "
                             "lean (train.py --low-memory: keras_maskrcnn.accel.memory)")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-infer", action="store_true", help="training steps only")
    parser.add_argument("--quick", action="store_true", help="one photo, 2 repeats, 1 step")
    # internal: worker processes
    parser.add_argument("--worker", choices=("prepare", "ours", "torchvision"))
    parser.add_argument("--workdir")
    parser.add_argument("--arch")
    parser.add_argument("--size", type=int)
    parser.add_argument("--task", choices=("infer", "train"))
    parser.add_argument("--pad", choices=("pipeline", "square"), default="pipeline")
    parser.add_argument("--allocator", choices=("default", "lean"), default="default")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    args.archs = args.archs.split(",")
    args.images = args.images.split(",")
    args.train_padding = args.train_padding and args.train_padding.split(",")
    args.train_allocator = args.train_allocator.split(",")
    if args.quick:
        args.images, args.repeats, args.train_repeats = args.images[:1], 2, 1
    return args


def main():
    args = parse_args()
    if args.worker == "prepare":
        return prepare(args)
    if args.worker == "ours":
        return our_worker(args)
    if args.worker == "torchvision":
        return torchvision_worker(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compare_torchvision_") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, __file__, "--worker", "prepare", "--archs",
                        ",".join(args.archs),
                        "--train-size", str(args.train_size), *common_argv(args, work)],
                       check=True, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        print(f"Whole model: ours vs torchvision on {args.threads} threads "
              f"(torch.set_num_threads, tf intra/inter-op threads), "
              f"torch.set_flush_denormal(True); prepared in {time.perf_counter() - started:.0f} s")
        print("Inference latency includes, on both sides, the uint8 photo -> resize, normalise, "
              "pad -> network -> 100 detections through the mask/keypoint heads -> boxes in "
              "original pixels and masks pasted into the photo (ours: model.detect; "
              "torchvision: model([tensor]) in eval mode, inference_mode). Ratio = ours / "
              "torchvision (lower is better); GFLOP counted by FlopCounterMode on torchvision's "
              "forward of the same network.")
        for arch in args.archs:
            for size in ([] if args.no_infer else args.sizes):
                bench_inference(args, arch, size, work)
            if not args.no_train:
                bench_training(args, arch, work)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
