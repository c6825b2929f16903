"""The "shapes" dataset: synthetic images of circles, triangles and rectangles, in COCO format.

Shape shorthand:
    M  annotated objects per image
    Kp keypoints per object (4: the extreme points top, right, bottom, left)
    H, W  image height and width (both ``image_size``)

Layout written by ``write_synthetic_dataset(output_dir, ...)``::

    output_dir/train/000001.jpg ...          (about 1 in 10 images is a .png)
    output_dir/val/000001.jpg ...
    output_dir/annotations/instances_train.json, instances_val.json
    output_dir/dataset_info.json             (the parameters; written last)

Conventions pinned here (tests/data/test_data_synthetic.py checks them):
    * Category ids are deliberately non-contiguous: 1 circle, 3 triangle, 7 rectangle, so the
      loader's dataset-id -> contiguous-id mapping is exercised.
    * Every shape is a convex polygon (a circle is a 48-gon) in continuous pixel coordinates
      (pixel (i, j) covers [j, j + 1) x [i, i + 1)). Masks are pycocotools' rasterisation of
      that polygon (clipped to the image) minus the objects drawn later, so each annotation's
      mask is exactly the visible part of its object and the image shows exactly those pixels.
    * Segmentations: polygons for unoccluded objects, compressed RLE for occluded ones, and
      uncompressed RLE (``counts`` a list) for the few ``iscrowd=1`` regions (clusters of small
      shapes, drawn first). ``bbox`` and ``area`` are those of the visible mask.
    * Keypoints (COCO person_keypoints style ``keypoints`` [x, y, v] * 4 and ``num_keypoints``,
      category fields ``keypoints`` and 1-based ``skeleton``): the extreme points of the whole
      polygon (the mean of tied vertices, e.g. the middle of a horizontal edge); v = 2 visible,
      1 occluded by a later object, 0 outside the image (then x = y = 0, as in COCO). Crowd
      regions have no keypoints (all zero). ``keypoint_categories`` (default all) names the
      categories that have keypoints; the others' category entries and annotations carry no
      ``keypoints`` (as COCO's non-person categories).
    * Deterministic: image i of a split draws from ``np.random.default_rng([seed, split, i])``.

Run ``python -m keras_maskrcnn.data.synthetic --output DIR --train N --val M --seed S``.
"""
import argparse
import functools
import json
import os
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = ((1, "circle"), (3, "triangle"), (7, "rectangle"))  # (dataset id, name)
KEYPOINT_NAMES = ("top", "right", "bottom", "left")
SKELETON = ((0, 1), (1, 2), (2, 3), (3, 0))  # 0-based; written 1-based in the json
FLIP_PAIRS = ((1, 3),)  # a horizontal flip swaps right and left
SPLITS = ("train", "val")

_CIRCLE_VERTICES = 48  # divisible by 4: the extreme points are vertices
_MIN_VISIBLE_FRACTION = 0.4  # an object must keep this share of its in-image area visible
_MIN_VISIBLE_PIXELS = 24
_PLACEMENT_TRIES = 12
_CROWD_PROBABILITY = 0.12
_PNG_PROBABILITY = 0.1


# ----------------------------------------------------------------------------- geometry
def _shape_polygon(rng, category, cx, cy, size):
    """(n, 2) float64 vertices of a convex shape of about ``size`` pixels around (cx, cy)."""
    if category == 1:  # circle
        angles = np.arange(_CIRCLE_VERTICES) * (2 * np.pi / _CIRCLE_VERTICES)
        radius = size / 2
        return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    if category == 3:  # triangle: three jittered points on a circle
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
        angles = angles + rng.uniform(-0.35, 0.35, 3)
        radii = size / 2 * rng.uniform(0.75, 1.0, 3)
        return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    half = size / 2 * rng.uniform(0.45, 1.0, 2)  # rectangle, axis-aligned half the time
    angle = 0.0 if rng.uniform() < 0.5 else rng.uniform(0, np.pi / 2)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return corners @ rot.T + [cx, cy]


def _clip_polygon(poly, width, height):
    """Sutherland-Hodgman clip of a polygon to the image rectangle [0, W] x [0, H]."""
    edges = ((0, 1, 0.0), (0, -1, float(width)), (1, 1, 0.0), (1, -1, float(height)))
    for axis, sign, bound in edges:  # keep points with sign * (p[axis] - bound) >= 0
        if len(poly) == 0:
            break
        inside = sign * (poly[:, axis] - bound) >= 0
        out = []
        for i in range(len(poly)):
            cur, prev = poly[i], poly[i - 1]
            if inside[i] != inside[i - 1]:  # the edge crosses the boundary
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if inside[i]:
                out.append(cur)
        poly = np.array(out).reshape(-1, 2)
    return poly


def _rasterize(poly, width, height):
    """pycocotools rasterisation of an in-image polygon -> (H, W) bool mask."""
    if len(poly) < 3:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects([poly.ravel().tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _extreme_points(poly):
    """(4, 2) top, right, bottom, left extreme points; ties -> mean of the tied vertices."""
    points = []
    for axis, pick in ((1, np.min), (0, np.max), (1, np.max), (0, np.min)):
        tied = np.abs(poly[:, axis] - pick(poly[:, axis])) < 1e-6
        points.append(poly[tied].mean(axis=0))
    return np.array(points)


# ----------------------------------------------------------------------------- painting
@functools.lru_cache(maxsize=4)
def _upsample_matrix(size, cells):
    """(size, cells) linear interpolation weights from a coarse grid to ``size`` pixels."""
    pos = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    lower = np.minimum(np.floor(pos).astype(int), cells - 2)
    weights = np.zeros((size, cells), np.float32)
    weights[np.arange(size), lower] = 1 - (pos - lower)
    weights[np.arange(size), lower + 1] = pos - lower
    return weights


def _background(rng, size, grid):
    """(H, W, 3) float32 background: a linear gradient, smooth noise blobs, or both."""
    yy, xx = grid
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    kind = rng.integers(3)  # 0 gradient, 1 blobs, 2 both
    if kind == 1:
        t = np.zeros_like(t)
    channels = [c0[c] + t * (c1[c] - c0[c]) for c in range(3)]  # 2-d ops: faster than (H, W, 3)
    if kind != 0:
        up = _upsample_matrix(size, 6)
        blobs = rng.uniform(-50, 50, (3, 6, 6)).astype(np.float32)
        channels = [ch + up @ b @ up.T for ch, b in zip(channels, blobs)]  # smooth 6x6 -> HxW
    image = np.stack(channels, axis=-1)
    noise = rng.standard_normal((size, size, 1), dtype=np.float32)
    return image + noise * np.float32(rng.uniform(2, 12))


def _paint(rng, image, mask, background_mean):
    """Fills ``mask`` in ``image`` with a solid, noisy or striped colour in place."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    for _ in range(8):  # a colour that stands out from the background
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - background_mean).mean() > 60:
            break
    crop = mask[y0:y1, x0:x1]
    kind = rng.integers(3)
    if kind == 0:
        fill = np.broadcast_to(colour, crop.shape + (3,))
    elif kind == 1:
        fill = colour + rng.normal(0, 20, crop.shape + (1,))
    else:
        period, angle = rng.uniform(4, 12), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
        fill = np.where(stripes[..., None], colour, 255 - colour)
    region = image[y0:y1, x0:x1]
    region[crop] = fill[crop]


# ----------------------------------------------------------------------------- one image
@functools.lru_cache(maxsize=4)
def _pixel_grid(size):
    """(2, H, W) float32 pixel-centre coordinates (y, x); read-only, cached."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    grid.flags.writeable = False
    return grid


def _place_objects(rng, size, num_objects):
    """Chooses shapes so that each keeps enough visible area. Returns a list of dicts."""
    objects = []
    for _ in range(num_objects):
        for _ in range(_PLACEMENT_TRIES):
            category = CATEGORIES[rng.integers(len(CATEGORIES))][0]
            extent = size * np.exp(rng.uniform(np.log(0.1), np.log(0.5)))
            margin = -0.15 * extent if rng.uniform() < 0.15 else extent / 2  # < 0: cut off
            cx, cy = rng.uniform(margin, size - margin, 2)
            poly = np.round(_shape_polygon(rng, category, cx, cy, extent), 2)
            clipped = np.round(_clip_polygon(poly, size, size), 2)  # as written in the json
            full = _rasterize(clipped, size, size)
            if full.sum() < _MIN_VISIBLE_PIXELS:
                continue
            visible_after = [o["visible"] & ~full for o in objects]
            if all(v.sum() >= max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * o["full"].sum())
                   for v, o in zip(visible_after, objects)):
                for o, v in zip(objects, visible_after):
                    o["visible"] = v
                objects.append(dict(category=category, poly=poly, clipped=clipped, full=full,
                                    visible=full))
                break
    return objects


def _crowd_region(rng, size):
    """A cluster of small shapes of one category: (category, union mask)."""
    category = CATEGORIES[rng.integers(len(CATEGORIES))][0]
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(5, 10)):
        px, py = cx + rng.uniform(-0.12, 0.12, 2) * size
        poly = _shape_polygon(rng, category, px, py, size * rng.uniform(0.04, 0.07))
        mask |= _rasterize(_clip_polygon(poly, size, size), size, size)
    return category, mask


def _keypoints(obj, later_masks, size):
    """COCO [x, y, v] * 4 of an object's extreme points and the number with v > 0."""
    values = []
    for x, y in _extreme_points(obj["poly"]):
        if not (0 <= x <= size and 0 <= y <= size):
            values += [0.0, 0.0, 0]
            continue
        row, col = min(int(y), size - 1), min(int(x), size - 1)
        occluded = any(m[row, col] for m in later_masks)
        values += [round(float(x), 2), round(float(y), 2), 1 if occluded else 2]
    return values, sum(v > 0 for v in values[2::3])


def _uncompressed_rle(mask):
    """COCO uncompressed RLE (column-major runs, starting with a run of zeros)."""
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1  # starts of runs after the first
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def _annotation(mask, category, iscrowd, segmentation):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"category_id": int(category), "iscrowd": iscrowd, "segmentation": segmentation,
            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()}


def make_image(rng, size, min_objects, max_objects):
    """Draws one image. Returns (uint8 (H, W, 3) image, list of annotation dicts without ids)."""
    grid = _pixel_grid(size)
    image = _background(rng, size, grid)
    background_mean = image.mean(axis=(0, 1))
    annotations = []
    crowd = _crowd_region(rng, size) if rng.uniform() < _CROWD_PROBABILITY else None
    objects = _place_objects(rng, size, int(rng.integers(min_objects, max_objects + 1)))
    if crowd is not None:
        category, mask = crowd
        _paint(rng, image, mask, background_mean)
        visible = mask & ~np.any([o["full"] for o in objects], axis=0) if objects else mask
        if visible.any():
            ann = _annotation(visible, category, 1, _uncompressed_rle(visible))
            ann.update(keypoints=[0] * 3 * len(KEYPOINT_NAMES), num_keypoints=0)
            annotations.append(ann)
    for i, obj in enumerate(objects):
        _paint(rng, image, obj["full"], background_mean)
        occluded = bool((obj["full"] & ~obj["visible"]).any())
        if occluded:
            rle = mask_utils.encode(np.asfortranarray(obj["visible"].astype(np.uint8)))
            segmentation = {"counts": rle["counts"].decode("ascii"), "size": list(rle["size"])}
        else:
            segmentation = [obj["clipped"].ravel().tolist()]
        ann = _annotation(obj["visible"], obj["category"], 0, segmentation)
        keypoints, count = _keypoints(obj, [o["full"] for o in objects[i + 1:]], size)
        ann.update(keypoints=keypoints, num_keypoints=count)
        annotations.append(ann)
    return np.clip(image, 0, 255).astype(np.uint8), annotations


# ----------------------------------------------------------------------------- writing
def split_paths(output_dir, split):
    """(annotation json, image directory) of a split ("train" or "val") of a written dataset."""
    return (os.path.join(output_dir, "annotations", f"instances_{split}.json"),
            os.path.join(output_dir, split))


def _categories(keypoint_categories):
    skeleton = [[a + 1, b + 1] for a, b in SKELETON]  # COCO skeletons are 1-based
    keypoints = {"keypoints": list(KEYPOINT_NAMES), "skeleton": skeleton}
    return [{"id": cid, "name": name, "supercategory": "shape",
             **(keypoints if cid in keypoint_categories else {})}
            for cid, name in CATEGORIES]


def _write_split(output_dir, split, num_images, seed, image_size, min_objects, max_objects,
                 keypoint_categories, progress=False):
    from tqdm import tqdm

    annotation_file, image_dir = split_paths(output_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(num_images), desc=f"writing {split}", unit="image",
                      disable=not progress):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        image, anns = make_image(rng, image_size, min_objects, max_objects)
        image_id = index + 1
        ext = "png" if rng.uniform() < _PNG_PROBABILITY else "jpg"
        file_name = f"{image_id:06d}.{ext}"
        Image.fromarray(image).save(os.path.join(image_dir, file_name),
                                    **({"quality": 92} if ext == "jpg" else {}))
        images.append({"id": image_id, "file_name": file_name, "height": image_size,
                       "width": image_size})
        for ann in anns:
            if ann["category_id"] not in keypoint_categories:
                ann = {k: v for k, v in ann.items() if k not in ("keypoints", "num_keypoints")}
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {"info": {"description": "keras-maskrcnn synthetic shapes", "version": "1.0"},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": _categories(keypoint_categories)}
    _write_json(annotation_file, coco)
    return annotation_file, image_dir


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(path + ".tmp", path)  # readers never see a half-written file


def write_synthetic_dataset(output_dir, num_train, num_val, seed=0, image_size=256,
                            min_objects=1, max_objects=4, keypoint_categories=None,
                            progress=False):
    """Writes the shapes dataset in COCO format (layout in the module docstring).

    Args:
        output_dir: directory (created).
        num_train, num_val: number of images per split.
        seed: the whole dataset is a deterministic function of the arguments.
        image_size: square image side in pixels.
        min_objects, max_objects: annotated objects drawn per image (inclusive; fewer when
            an object cannot be placed with enough of it visible). 0 gives negative images.
        keypoint_categories: dataset ids of the categories with keypoints (None: all).
        progress: show a tqdm progress bar per split (on stderr).

    Returns:
        {"train": (annotation json, image dir), "val": (...)}.
    """
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, "
                         f"{max_objects}")
    params = dict(num_train=num_train, num_val=num_val, seed=seed, image_size=image_size,
                  min_objects=min_objects, max_objects=max_objects)
    all_ids = [cid for cid, _ in CATEGORIES]
    if keypoint_categories is not None:
        unknown = sorted(set(keypoint_categories) - set(all_ids))
        if unknown:
            raise ValueError(f"keypoint_categories {unknown} are not category ids {all_ids}")
        params["keypoint_categories"] = sorted(keypoint_categories)  # info: only when given
    keypoint_categories = set(all_ids if keypoint_categories is None else keypoint_categories)
    paths = {}
    for split, count in zip(SPLITS, (num_train, num_val)):
        paths[split] = _write_split(output_dir, split, count, seed, image_size, min_objects,
                                    max_objects, keypoint_categories, progress)
    _write_json(os.path.join(output_dir, "dataset_info.json"), params)
    return paths


def ensure_synthetic_dataset(synthetic_config, progress=True):
    """Writes the dataset of a ``SyntheticConfig`` unless ``output_dir`` already holds one
    written with the same parameters (with a progress bar on stderr unless ``progress`` is
    False). Returns the paths as ``write_synthetic_dataset``."""
    c = synthetic_config
    params = dict(num_train=c.num_train, num_val=c.num_val, seed=c.seed,
                  image_size=c.image_size, min_objects=c.min_objects, max_objects=c.max_objects)
    info = os.path.join(c.output_dir, "dataset_info.json")
    if os.path.exists(info):
        with open(info, encoding="utf-8") as f:
            if json.load(f) == params:
                return {s: split_paths(c.output_dir, s) for s in SPLITS}
    return write_synthetic_dataset(c.output_dir, **params, progress=progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="dataset directory")
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--min-objects", type=int, default=1)
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("--keypoint-categories", type=int, nargs="+", metavar="ID",
                        help="category ids with keypoints (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = write_synthetic_dataset(args.output, args.train, args.val, args.seed,
                                    args.image_size, args.min_objects, args.max_objects,
                                    args.keypoint_categories, progress=not args.no_progress)
    print(f"wrote {args.train} + {args.val} images in {time.perf_counter() - start:.1f} s:")
    for split, (annotations, images) in paths.items():
        print(f"  {split}: {annotations} ({images})")


if __name__ == "__main__":
    main()
