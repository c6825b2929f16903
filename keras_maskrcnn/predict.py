"""Run a model on one image and draw what it finds: ``python -m keras_maskrcnn.predict``.

    python -m keras_maskrcnn.predict --config configs/shapes.yaml \\
        --weights runs/shapes/model.weights.h5 --image photo.jpg --output out.png \\
        [--score-threshold 0.5] [--set model.roi_heads.score_threshold=0.3 ...]

Builds the config's model (``builders.build_model``), loads the ``.weights.h5`` file, runs
``model.detect`` on the image, prints the detections with score >= ``--score-threshold``
(name, score, box in original pixels) and writes them drawn on the image as PNG
(``keras_maskrcnn.visualize.draw_detections``).

Class names and dataset category ids come from the COCO annotations json of the config's
validation split (``data.val.annotations``; for the synthetic format
``data.synthetic.output_dir/annotations/instances_val.json``), or ``--annotations``: its
categories sorted by id are contiguous classes 1..K, as in training. Without a readable json
(or when its category count does not match ``model.num_classes - 1``) labels are the
contiguous ids and are written "class N". The keypoint skeleton is
``model.keypoint_head.skeleton``; when the config leaves ``model.keypoint_head.category_ids``
null and only some of the json's categories declare keypoints, only those get keypoints
drawn (``builders.with_dataset_keypoint_categories``, as in training). Missing files are
reported before any model is built.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from keras_maskrcnn import config as config_lib


def annotations_path(cfg):
    """The COCO json holding the class names of ``cfg``'s validation split, or None."""
    val = cfg.data.val
    if val.format == "coco":
        return val.annotations
    if val.format == "synthetic":
        return os.path.join(cfg.data.synthetic.output_dir, "annotations", "instances_val.json")
    return None


def read_categories(path):
    """(dataset ids sorted ascending, {dataset id: name}) from a COCO json's categories."""
    try:
        with open(path, encoding="utf-8") as f:
            categories = json.load(f)["categories"]
        pairs = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read COCO categories ({type(e).__name__}: {e})") \
            from None
    return tuple(i for i, _ in pairs), dict(pairs)


def resolve_categories(cfg, annotations=None, log=print):
    """(category_ids for ``build_model`` or None, class_names {label: name} or None).

    ``annotations`` (a path) wins over the config's json; a json that is missing or whose
    category count is not ``model.num_classes - 1`` gives (None, None) with a note in ``log``.
    """
    path = annotations or annotations_path(cfg)
    if path is None or not os.path.exists(path):
        if annotations:
            raise FileNotFoundError(f"--annotations {annotations}: no such file")
        log(f"note: no annotations json ({path}); labels are contiguous class ids")
        return None, None
    ids, names = read_categories(path)
    expected = cfg.model.num_classes - 1
    if len(ids) != expected:
        log(f"note: {path} has {len(ids)} categories but the model has {expected} classes; "
            "labels are contiguous class ids")
        return None, None
    return ids, names


def keypoint_category_map(path, category_ids):
    """``coco.CategoryMap`` of the json's categories (keypoint declarations included), or None
    when the categories were not resolved (``category_ids`` None)."""
    from keras_maskrcnn.data import coco

    if category_ids is None:
        return None
    with open(path, encoding="utf-8") as f:  # read_categories has read it already
        return coco.CategoryMap.from_categories(json.load(f)["categories"])


def read_image(path, max_pixels=None):
    """(H, W, 3) uint8 RGB of an image file: ``keras_maskrcnn.data.images.read_image``, the
    reader of training and evaluation (16-bit scaled, alpha dropped, EXIF orientation
    ignored as in training and serving). ``max_pixels`` (default
    ``images.DEFAULT_MAX_IMAGE_PIXELS``, the default of ``input.max_image_pixels``): larger
    images are refused from their header. Raises ``images.ImageError`` (a ValueError) naming
    the file."""
    from keras_maskrcnn.data import images

    return images.read_image(path, images.DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None
                             else max_pixels)


def exif_note(path):
    """A note when ``path`` carries an EXIF orientation other than 1 (ignored), else None."""
    from keras_maskrcnn.data import images

    orientation = images.exif_orientation(path)
    if orientation == 1:
        return None
    return (f"note: {path} has EXIF orientation {orientation}; it is ignored (the pixels are "
            "used as stored, as in training and serving)")


def format_detections(result, class_names, score_threshold):
    """Printable lines (one per detection with score >= threshold, best first)."""
    from keras_maskrcnn.visualize import class_name

    scores = np.asarray(result["scores"]).reshape(-1)  # (n,)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
    lines = [f"  {'label':<16s} {'score':>6s}  box (x1, y1, x2, y2) in image pixels"]
    for i in order:
        box = ", ".join(f"{v:.1f}" for v in np.asarray(result["boxes"])[i])
        lines.append(f"  {class_name(result['labels'][i], class_names):<16s} "
                     f"{scores[i]:6.3f}  ({box})")
    return lines


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m keras_maskrcnn.predict",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config of the model")
    parser.add_argument("--weights", help=".weights.h5 file (default: model.weights.h5 next to "
                        "--config when there, else random weights with a warning)")
    parser.add_argument("--image", "--input", dest="image", required=True,
                        help="input image (jpg, png, ...)")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="draw and print detections with score >= this (default 0.5; the "
                        "model drops those below model.roi_heads.score_threshold first)")
    parser.add_argument("--annotations", help="COCO json with the class names (default: the "
                        "config's validation annotations)")
    config_lib.add_override_argument(parser, "model.roi_heads.score_threshold=0.3")
    args = parser.parse_args(argv)
    if args.config is not None and not os.path.isfile(args.config):
        try:  # a packaged config's name
            args.config = config_lib.resolve_config(args.config)
        except config_lib.ConfigError as e:
            parser.error(f"--config {e}")
    if args.weights is None:
        from keras_maskrcnn.cli.weights import weights_beside
        args.weights = weights_beside(args.config)
    for flag in ("config", "weights", "image", "annotations"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            parser.error(f"--{flag} {path}: no such file")
    return parser, args


def main(argv=None):
    parser, args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    try:
        cfg = config_lib.load_config(args.config, args.set)
        category_ids, class_names = resolve_categories(cfg, args.annotations)
        image = read_image(args.image, cfg.input.max_image_pixels)
    except (ValueError, FileNotFoundError) as e:  # ConfigError and ImageError are ValueErrors
        parser.error(str(e))
    note = exif_note(args.image)
    if note:
        print(note, file=sys.stderr)

    from keras_maskrcnn import builders, visualize  # TensorFlow and PIL, once the args are good

    categories = keypoint_category_map(args.annotations or annotations_path(cfg), category_ids)
    if categories is not None:
        cfg = builders.with_dataset_keypoint_categories(cfg, categories)
    from keras_maskrcnn.convert import weights as weights_lib

    model = builders.build_model(cfg, category_ids=category_ids)
    try:
        if args.weights:  # another class count: the class layers are skipped, logged
            weights_lib.load_weights(model, args.weights)
        else:  # the config's model.weights (and model.backbone.weights), if it names them
            weights_lib.load_initial_weights(model, cfg.model)
            if not cfg.model.weights:
                print("warning: no --weights given, the model has random weights",
                      file=sys.stderr)
    except (ValueError, OSError) as e:
        parser.error(f"cannot load the weights into the model of {args.config}: {e}")
    start = time.perf_counter()
    result = model.detect([image])[0]
    seconds = time.perf_counter() - start
    drawn = visualize.draw_detections(
        image, result, class_names, keypoint_skeleton=cfg.model.keypoint_head.skeleton,
        score_threshold=args.score_threshold)
    visualize.save_png(drawn, args.output)
    lines = format_detections(result, class_names, args.score_threshold)
    print(f"{args.image}: {image.shape[1]}x{image.shape[0]} px, {len(lines) - 1} of "
          f"{len(result['scores'])} detections with score >= {args.score_threshold:g} "
          f"({seconds:.2f} s)")
    print("\n".join(lines))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
