"""Images/s of ``predict`` on a folder (batched, keras_maskrcnn.prediction) against one image at
a time (``model.detect`` per image, the same drawing and results), in one process.

    python bench/predict_throughput.py --config configs/shapes.yaml --images 24 \\
        --sizes 240x320,320x240 --batch-sizes 1,2,4

Random weights (the time does not depend on them, up to the number of detections: the score
threshold is raised so both paths keep the same ones). Both paths are traced first on one
image of each size (not timed); then each is timed ``--repeats`` times, alternating, and the
best run is reported. Also prints the time of the first call (build + trace), which the older
one-image CLI paid for every image.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_maskrcnn import builders, config as config_lib, media, predict, prediction  # noqa
from keras_maskrcnn import visualize  # noqa: E402


def write_folder(directory, count, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(directory, f"{i:04d}.jpg"), quality=90)


def one_by_one(model, entries, output_dir, threshold):
    """The single-image path: read, model.detect, draw, COCO records, for each image."""
    names = prediction.category_names_map(model)
    for image_id, (path, file_name) in enumerate(entries, start=1):
        image = predict.read_image(path)
        result = model.detect([image])[0]
        entry = {"id": image_id, "file_name": file_name}
        prediction.coco_records(entry, result, names, threshold)
        picture = visualize.draw_detections(image, result, score_threshold=threshold)
        visualize.save_png(picture, os.path.join(output_dir, f"{image_id}.png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--sizes", default="240x320,320x240", help="HxW,HxW,...")
    parser.add_argument("--batch-sizes", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--set", nargs="*", default=[])
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    cfg = config_lib.load_config(args.config, args.set)
    start = time.perf_counter()
    model = builders.build_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        os.makedirs(folder)
        write_folder(folder, args.images, sizes)
        kind, entries = media.list_inputs(folder)
        warm = entries[:len(sizes)]
        one_by_one(model, warm, out, args.threshold)
        print(f"first model.detect calls (build + trace): {time.perf_counter() - start:.1f} s")
        for b in batch_sizes:
            prediction.predict_to_directory(model, kind, warm * b, out, args.threshold,
                                            batch_size=b, progress=False)
        best = {}
        for _ in range(args.repeats):
            t = time.perf_counter()
            one_by_one(model, entries, out, args.threshold)
            best["one by one"] = min(best.get("one by one", 1e9), time.perf_counter() - t)
            for b in batch_sizes:
                t = time.perf_counter()
                prediction.predict_to_directory(model, kind, entries, out, args.threshold,
                                                batch_size=b, progress=False)
                key = f"folder, batch {b}"
                best[key] = min(best.get(key, 1e9), time.perf_counter() - t)
    print(f"{args.config}, {args.images} images of {args.sizes}, best of {args.repeats}:")
    for key, seconds in best.items():
        print(f"  {key:<16s} {seconds:7.2f} s  {args.images / seconds:6.2f} images/s")


if __name__ == "__main__":
    main()
