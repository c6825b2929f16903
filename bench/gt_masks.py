"""Benchmark: host memory and throughput of the training input pipeline, full-image GT masks
against cropped ones (``input.gt_mask_format``), at COCO size.

    python bench/gt_masks.py [--images 32] [--batches 12] [--batch-size 2] [--workdir DIR]
                             [--source coco|tfrecord] [--stored-crops]

Writes (once, into ``--workdir``) a COCO-format dataset of 800 x 1333 JPEGs, each with
``--min-instances``..``--max-instances`` (default 1..50, uniform) star-shaped polygon
instances of log-uniform size (12-600 px), as ``annotations.json``. Then, for each format in a
fresh child process (so RSS figures are its own), runs ``pipeline.build_dataset`` as training
does: COCO source, flip 0.5, scale jitter ``min_size_train`` (640..800 step 32, choice),
``max_size`` 1333, aspect-ratio grouping, ``max_instances`` 100, AUTOTUNE parallelism. It
prints, per format: bytes of the example tensors per image (the batch dicts' nbytes / batch
size, gt_masks separately), the process' RSS growth while iterating (VmRSS after the batches
minus before the first, and VmHWM - VmRSS before: the peak growth), and images/s over
``--batches`` batches after 2 warm-up batches; then the full / cropped ratios. ``--source
tfrecord`` first writes the set as 2 TFRecord shards (PNG masks, ``data.tfrecord``) and reads
those instead; with ``--stored-crops`` the shards also hold each object's ``--crop-size`` crop
(``write_tfrecords(mask_crop_size=...)``), which the cropped format reads instead of the PNGs.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HEIGHT, WIDTH = 800, 1333


def _star(rng):
    side = np.exp(rng.uniform(np.log(12), np.log(600)))
    cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
    n = int(rng.integers(5, 31))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = side / 2 * rng.uniform(0.3, 1.0, n)
    stretch = rng.uniform(0.5, 1.5)
    poly = np.stack([cx + stretch * radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    return np.round(np.clip(poly, 0, [WIDTH, HEIGHT]), 2)


def write_dataset(root, num_images, min_instances, max_instances, seed=0):
    """800 x 1333 JPEGs with polygon instances and their COCO json; returns the json path."""
    from PIL import Image, ImageDraw

    ann_file = os.path.join(root, "annotations.json")
    if os.path.exists(ann_file):
        with open(ann_file) as f:
            if len(json.load(f)["images"]) == num_images:
                return ann_file
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    ramp = np.linspace(60, 190, WIDTH)[None, :, None] + np.linspace(0, 40, HEIGHT)[:, None, None]
    for image_id in range(1, num_images + 1):
        noise = rng.normal(0, 12, (HEIGHT, WIDTH, 3))
        picture = Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(min_instances, max_instances + 1))):
            poly = _star(rng)
            x1, y1 = poly.min(0)
            x2, y2 = poly.max(0)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            draw.polygon([tuple(p) for p in poly], fill=tuple(int(c) for c in
                                                              rng.integers(0, 255, 3)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(rng.integers(1, 4)), "iscrowd": 0,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "area": float((x2 - x1) * (y2 - y1)), "segmentation": [poly.ravel().tolist()]})
        name = f"{image_id:06d}.jpg"
        picture.save(os.path.join(root, name), quality=90)
        images.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
    categories = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann_file


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _records_dir(root, crop_size, stored_crops):
    return os.path.join(root, f"records-crops{crop_size}" if stored_crops else "records")


def run_format(root, mask_format, batches, batch_size, crop_size, source_kind="coco",
               stored_crops=False):
    """Child process: iterate the pipeline; print one JSON line of figures."""
    import tensorflow as tf

    from keras_maskrcnn.config import InputConfig
    from keras_maskrcnn.data import coco, pipeline, tfrecord

    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    ann_file = os.path.join(root, "annotations.json")
    source = coco.load_coco(ann_file, root) if source_kind == "coco" else \
        tfrecord.load_tfrecords(os.path.join(_records_dir(root, crop_size, stored_crops),
                                             "train-*.tfrecord"), ann_file)
    input_config = InputConfig(min_size_train=(640, 672, 704, 736, 768, 800), max_size=1333,
                               max_instances=100)
    dataset = pipeline.build_dataset(
        source, input_config, batch_size, True, seed=0, group_by_aspect_ratio=True,
        gt_mask_size=crop_size if mask_format == "cropped" else None)
    iterator = iter(dataset)
    rss_before = _status_kib("VmRSS")
    per_example, mask_bytes, instances = [], [], []
    for _ in range(2):  # warm-up: tracing, the first parallel calls
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        per_example.append(sum(v.numpy().nbytes for v in batch.values()) / batch_size)
        mask_bytes.append(batch["gt_masks"].numpy().nbytes / batch_size)
        instances.append(float((batch["gt_classes"].numpy() > 0).sum()) / batch_size)
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "format": mask_format, "images_per_s": batches * batch_size / elapsed,
        "bytes_per_example": float(np.mean(per_example)),
        "max_bytes_per_example": float(np.max(per_example)),
        "gt_mask_bytes_per_example": float(np.mean(mask_bytes)),
        "instances_per_image": float(np.mean(instances)),
        "rss_growth_mib": (_status_kib("VmRSS") - rss_before) / 1024,
        "peak_rss_growth_mib": (_status_kib("VmHWM") - rss_before) / 1024}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--min-instances", type=int, default=1)
    parser.add_argument("--max-instances", type=int, default=50)
    parser.add_argument("--crop-size", type=int, default=112)
    parser.add_argument("--workdir", default="/tmp/keras_maskrcnn_bench_gt_masks")
    parser.add_argument("--formats", nargs="+", default=["full", "cropped"])
    parser.add_argument("--source", choices=("coco", "tfrecord"), default="coco")
    parser.add_argument("--stored-crops", action="store_true",
                        help="tfrecord: records with the crops stored (--mask-crop-size)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_format(args.workdir, args.child, args.batches, args.batch_size,
                          args.crop_size, args.source, args.stored_crops)
    ann_file = write_dataset(args.workdir, args.images, args.min_instances, args.max_instances)
    records = _records_dir(args.workdir, args.crop_size, args.stored_crops)
    if args.source == "tfrecord" and not os.path.isdir(records):
        from keras_maskrcnn.data import tfrecord
        tfrecord.write_tfrecords(ann_file, args.workdir, os.path.join(records, "train"), 2,
                                 progress=False,
                                 mask_crop_size=args.crop_size if args.stored_crops else None)
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} cores")
    results = {}
    for mask_format in args.formats:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mask_format, "--workdir", args.workdir,
             "--batches", str(args.batches), "--batch-size", str(args.batch_size),
             "--crop-size", str(args.crop_size), "--source", args.source]
            + ["--stored-crops"] * args.stored_crops,
            check=True, capture_output=True, text=True, env=dict(os.environ,
                                                                 TF_CPP_MIN_LOG_LEVEL="2"))
        results[mask_format] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mask_format]
        mib = {k: r[k] / 2**20 for k in ("bytes_per_example", "max_bytes_per_example",
                                         "gt_mask_bytes_per_example")}
        print(f"{mask_format:8s} {r['images_per_s']:6.2f} images/s; per example "
              f"{mib['bytes_per_example']:7.2f} MiB (max {mib['max_bytes_per_example']:.2f}"
              f"; gt_masks {mib['gt_mask_bytes_per_example']:.2f}) at "
              f"{r['instances_per_image']:.1f} instances/image; RSS growth "
              f"{r['rss_growth_mib']:.0f} MiB (peak {r['peak_rss_growth_mib']:.0f})")
    if {"full", "cropped"} <= set(results):
        f, c = results["full"], results["cropped"]
        print(f"cropped / full: throughput x{c['images_per_s'] / f['images_per_s']:.2f}, "
              f"bytes per example x{c['bytes_per_example'] / f['bytes_per_example']:.3f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
