"""Evaluate a trained detector with COCOeval on the validation split of its config.

    kmr evaluate --config shapes --weights runs/shapes/model.weights.h5 \
        [--set key=value ...] [--max-images N] [--output DIR]

(``python evaluate.py`` in a checkout is the same command.)

Reads and validates the config (strict, before any work), finds the validation data
(``data.val.annotations`` / ``data.val.images`` for format coco; for format synthetic
``<data.synthetic.output_dir>/annotations/instances_val.json`` and ``<output_dir>/val``),
builds the model with the annotations' category mapping (sorted category ids -> contiguous
1..K; keypoints only for the categories declaring them when only some do and
``model.keypoint_head.category_ids`` is null) and loads the weights (``.weights.h5``; a
``.keras`` file brings its own architecture).
Prints COCOeval's standard tables and a one-line summary; writes results.json (COCO results)
and metrics.json to ``--output`` (default ``<train.output_dir>/eval``). Exit status 2 with a
message naming the path or key on a bad config or a missing file.
"""
import argparse
import json
import os
import sys

from keras_maskrcnn import config as config_lib  # import-light: no TensorFlow
from keras_maskrcnn.cli.weights import resolve_weights
from keras_maskrcnn.data import coco_json  # json and pycocotools only


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate keras-maskrcnn with COCOeval.")
    parser.add_argument("--config", required=True,
                        help="a packaged config's name (kmr train --list-configs) or a YAML "
                             "file's path")
    parser.add_argument("--weights", default=None,
                        help="model weights: a .weights.h5 file or a whole .keras model "
                             "(default: model.weights.h5 next to --config, as in a run "
                             "directory or a `kmr convert` output)")
    config_lib.add_override_argument(parser, "eval.max_images=50")
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate the first N images (default: eval.max_images)")
    parser.add_argument("--output", default=None,
                        help="output directory (default: <train.output_dir>/eval)")
    return parser.parse_args(argv)


def val_split_paths(data_cfg):
    """(annotation json, image directory) of ``data.val``; FileNotFoundError names a missing
    path, ValueError a format evaluation cannot read."""
    split = data_cfg.val
    if split.format == "synthetic":
        out = data_cfg.synthetic.output_dir
        paths = (os.path.join(out, "annotations", "instances_val.json"), os.path.join(out, "val"))
        hint = (f" (write it with: python -m keras_maskrcnn.data.synthetic --output {out}, or "
                "train once with this config)")
    elif split.format == "coco":
        paths, hint = (split.annotations, split.images), ""
    else:
        raise ValueError(f"data.val.format {split.format!r}: evaluation needs a COCO JSON "
                         "(format coco or synthetic)")
    if not os.path.isfile(paths[0]):
        raise FileNotFoundError(f"validation annotations not found: {paths[0]}{hint}")
    if not os.path.isdir(paths[1]):
        raise FileNotFoundError(f"validation image directory not found: {paths[1]}{hint}")
    return paths


def category_ids_of(annotations_json, num_classes):
    """The JSON's sorted category ids when they match num_classes - 1, else None."""
    with open(annotations_json, encoding="utf-8") as f:
        ids = sorted(c["id"] for c in json.load(f).get("categories", []))
    return ids if len(ids) == num_classes - 1 else None


def load_model(cfg, weights, category_ids):
    """A MaskRCNN with ``weights`` loaded (``.weights.h5`` into the config's model, or a
    ``.keras`` file as saved, given the category mapping if it has none)."""
    if weights.endswith(".keras"):
        import keras

        from keras_maskrcnn import MaskRCNN  # noqa: F401  registers the class and its builder
        model = keras.saving.load_model(weights)
        if model.category_ids is None and category_ids is not None:
            model.category_ids = list(category_ids)
        return model
    from keras_maskrcnn import builders
    from keras_maskrcnn.convert.weights import load_weights

    model = builders.build_model(cfg, category_ids=category_ids)
    load_weights(model, weights)  # another class count: the class layers are skipped, logged
    return model


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = config_lib.load_config(args.config, overrides=args.set)  # strict: fails fast
        annotations, images = val_split_paths(cfg.data)
        # lenient by default: defective annotations are listed (data.strict: an error)
        parsed = coco_json.read_coco_json(annotations, strict=cfg.data.strict)
        print(parsed.report.summary())
        if args.weights is None:
            args.weights = resolve_weights(args.config)
        if not os.path.isfile(args.weights):
            raise FileNotFoundError(f"weights file not found: {args.weights}")
        if not args.weights.endswith((".weights.h5", ".keras")):
            raise ValueError(f"--weights {args.weights}: expected a .weights.h5 or .keras file")
        category_ids = category_ids_of(annotations, cfg.model.num_classes)
    except (config_lib.ConfigError, OSError, ValueError, KeyError) as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        return 2

    from keras_maskrcnn import builders, evaluation  # TensorFlow: once the inputs are good
    from keras_maskrcnn.data.coco import CategoryMap

    if category_ids is not None:  # keypoints only for the json's keypoint categories
        categories = CategoryMap.from_categories(parsed.categories.values())
        cfg = builders.with_dataset_keypoint_categories(cfg, categories)

    try:
        model = load_model(cfg, args.weights, category_ids)
    except ValueError as e:  # weights that do not fit the config's model
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        return 2
    max_images = args.max_images if args.max_images is not None else cfg.eval.max_images
    output = args.output or os.path.join(cfg.train.output_dir, "eval")
    metrics = evaluation.evaluate_model(model, annotations, images, max_images=max_images,
                                        output_dir=output)
    print(f"{evaluation.summary_line(metrics)} -> {os.path.join(output, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
