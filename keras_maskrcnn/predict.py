"""Run a model on images, a folder, a glob or a video: ``python -m keras_maskrcnn.predict``.

    python -m keras_maskrcnn.predict --config C --weights W --input FILE|DIR|GLOB|VIDEO \\
        --output DIR [--score-threshold 0.5] [--draw-threshold T] [--batch-size 4] \\
        [--per-image-json] [--no-draw] [--set model.roi_heads.score_threshold=0.3 ...]

Builds the config's model (``builders.build_model``), loads the ``.weights.h5`` file and
writes into DIR (``keras_maskrcnn.prediction``): ``results.json`` (COCO results of every
detection with score >= ``--score-threshold``: file name, category id and name, bbox xywh,
score, RLE segmentation, keypoints), ``images.json`` (the images, so that pycocotools'
``COCO("images.json").loadRes("results.json")`` reads them), one PNG drawing per image (or
``<stem>.annotated.mp4`` for a video, same frame count), and with ``--per-image-json`` one
JSON per image. Images are batched (``keras_maskrcnn.batch_inference``); a tqdm bar shows
progress. An image that cannot be decoded is skipped with a warning (a single --input image
is an error). Inputs: ``keras_maskrcnn.media.list_inputs``.

One image with ``--output out.png`` (the older form; ``--image`` is ``--input``) draws that
image into out.png and prints its detections with score >= ``--score-threshold``.

Class names and dataset category ids come from the config (``model.category_ids`` /
``model.category_names``: a training run's config.yaml has the data's, a converted COCO model's
COCO's). Otherwise, or with ``--annotations``, from a COCO annotations json: the config's
validation split's (``data.val.annotations``; for the synthetic format
``data.synthetic.output_dir/annotations/instances_val.json``) or ``--annotations``; its
categories sorted by id are contiguous classes 1..K, as in training. Without either (or when
the json's category count does not match ``model.num_classes - 1``) labels are the contiguous
ids and are drawn "class N" (category_name null). The keypoint skeleton is
``model.keypoint_head.skeleton``; when the config leaves ``model.keypoint_head.category_ids``
null and only some of the json's categories declare keypoints, only those get keypoints
(``builders.with_dataset_keypoint_categories``, as in training). Missing files are reported
before any model is built.
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
    parser.add_argument("--input", "--image", dest="input", required=True,
                        help="an image, a directory of images, a glob (quote it) or a video")
    parser.add_argument("--output", required=True, help="output directory (or, for one "
                        "image, a .png file: that image drawn)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="results.json, printing and drawing keep detections with score "
                        ">= this (default 0.5; the model drops those below "
                        "model.roi_heads.score_threshold first)")
    parser.add_argument("--draw-threshold", type=float, default=None,
                        help="drawings show detections with score >= this (default: "
                        "--score-threshold)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="images per model call (default 4; same-size inputs batch)")
    parser.add_argument("--per-image-json", action="store_true",
                        help="also write per_image/<name>.json for each image")
    parser.add_argument("--no-draw", action="store_true", help="write no drawings / video")
    parser.add_argument("--annotations", help="COCO json with the class names (default: the "
                        "config's names, else its validation annotations)")
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
    for flag in ("config", "weights", "annotations"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            parser.error(f"--{flag} {path}: no such file")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return parser, args


def categories(cfg, annotations=None, log=print):
    """(category_ids for ``build_model`` or None, class_names {label: name} or None, json
    path the names came from or None): the config's names unless ``annotations`` is given,
    else ``resolve_categories``."""
    if annotations is None and cfg.model.category_names is not None:
        return None, None, None  # the model carries them (model.category_names)
    ids, names = resolve_categories(cfg, annotations, log)
    return ids, names, (annotations or annotations_path(cfg)) if ids is not None else None


def _build_model(cfg, args, parser, category_ids, json_path):
    from keras_maskrcnn import builders
    from keras_maskrcnn.convert import weights as weights_lib

    if json_path is not None:
        categories_map = keypoint_category_map(json_path, category_ids)
        cfg = builders.with_dataset_keypoint_categories(cfg, categories_map)
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
    return model


def _draw_one(model, cfg, args, image, class_names):
    """The older form: one image drawn into ``--output`` (a .png), detections printed."""
    from keras_maskrcnn import prediction, visualize

    names = prediction.category_names_map(model, class_names) or None
    start = time.perf_counter()
    result = model.detect([image])[0]
    seconds = time.perf_counter() - start
    drawn = visualize.draw_detections(
        image, result, names, keypoint_skeleton=cfg.model.keypoint_head.skeleton,
        score_threshold=args.score_threshold if args.draw_threshold is None
        else args.draw_threshold)
    visualize.save_png(drawn, args.output)
    lines = format_detections(result, names, args.score_threshold)
    print(f"{args.input}: {image.shape[1]}x{image.shape[0]} px, {len(lines) - 1} of "
          f"{len(result['scores'])} detections with score >= {args.score_threshold:g} "
          f"({seconds:.2f} s)")
    print("\n".join(lines))
    print(f"wrote {args.output}")
    return result


def main(argv=None):
    """The command line. Returns the detections (``detect``'s dict) of the one image in the
    older form (``--output out.png``), else results.json's list."""
    parser, args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    from keras_maskrcnn import media

    try:
        cfg = config_lib.load_config(args.config, args.set)
        kind, entries = media.list_inputs(args.input)
        one_png = kind == "file" and args.output.lower().endswith(".png")
        image = (read_image(entries[0][0], cfg.input.max_image_pixels) if kind == "file"
                 else None)
        if kind == "video":
            media.video_info(entries[0][0])  # readable, and PyAV installed
        category_ids, class_names, json_path = categories(cfg, args.annotations)
    except (ValueError, FileNotFoundError, ImportError) as e:  # ConfigError is a ValueError
        parser.error(str(e))
    if kind == "file":
        note = exif_note(entries[0][0])
        if note:
            print(note, file=sys.stderr)
    model = _build_model(cfg, args, parser, category_ids, json_path)
    if one_png:
        return _draw_one(model, cfg, args, image, class_names)
    from keras_maskrcnn import prediction

    start = time.perf_counter()
    try:
        out = prediction.predict_to_directory(
            model, kind, entries, args.output, args.score_threshold, args.draw_threshold,
            args.batch_size, args.per_image_json, not args.no_draw, class_names,
            cfg.model.keypoint_head.skeleton, max_image_pixels=cfg.input.max_image_pixels)
    except ValueError as e:
        parser.error(str(e))
    seconds = time.perf_counter() - start
    count = len(out["images"])
    print(f"{args.input}: {count} {'frames' if kind == 'video' else 'images'} in "
          f"{seconds:.1f} s ({count / max(seconds, 1e-9):.2f}/s), {len(out['results'])} "
          f"detections with score >= {args.score_threshold:g}"
          + (f", {len(out['skipped'])} unreadable skipped" if out["skipped"] else ""))
    print(f"wrote {os.path.join(args.output, 'results.json')}"
          + (f" and {out['output_video']}" if out["output_video"] else ""))
    return out["results"]


if __name__ == "__main__":
    main()
