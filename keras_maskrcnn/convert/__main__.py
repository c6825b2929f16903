"""Weight conversion CLI.

    python -m keras_maskrcnn.convert torchvision --arch maskrcnn_resnet50_fpn \
        --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output converted/ \
        [--weights auto|coco_v1|coco_legacy|trained]
    python -m keras_maskrcnn.convert yolact --checkpoint yolact_base_54_800000.pth \
        --output converted/ [--arch yolact_base|yolact_resnet50]
    python -m keras_maskrcnn.convert detectron2 --checkpoint model_final_f10217.pkl \
        --config-name mask_rcnn_R_50_FPN_3x --output converted/

write ``converted/model.weights.h5`` and ``converted/config.yaml`` (the config that reproduces
the source's inference), which ``model.detect``, ``evaluate.py`` and export then use.
"""
import argparse
import logging
import os

from keras_maskrcnn import config as config_lib
from keras_maskrcnn.convert import detectron2, detectron2_zoo, yolact
from keras_maskrcnn.convert.torchvision_models import (ARCHITECTURES, WEIGHTS_CHOICES,
                                                     converted_config, from_torchvision)


def _add_common(parser):
    parser.add_argument("--checkpoint", required=True, help=".pth state_dict (detectron2: .pkl)")
    parser.add_argument("--output", required=True, help="output directory")
    config_lib.add_override_argument(parser, "model.roi_heads.score_threshold=0.3")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_maskrcnn.convert",
                                     description="Convert detection weights to keras-maskrcnn.")
    sub = parser.add_subparsers(dest="source", required=True)
    tv = sub.add_parser("torchvision", help="a torchvision detection checkpoint (.pth)")
    tv.add_argument("--arch", required=True, choices=ARCHITECTURES)
    tv.add_argument("--weights", default="auto", choices=WEIGHTS_CHOICES,
                    help="which weights the file holds, for FrozenBatchNorm's eps (not stored "
                         "in it): coco_v1 = torchvision's released COCO_V1 files (eps 0, its "
                         "overwrite_eps); coco_legacy = keypointrcnn_resnet50_fpn_coco-9f466800"
                         ".pth, trained = a model trained with torchvision (both 1e-5); auto "
                         "(default): by the released file names, else trained")
    _add_common(tv)
    yl = sub.add_parser("yolact", help="a reference YOLACT checkpoint (dbolya/yolact .pth), "
                                       "read without torch")
    yl.add_argument("--arch", default=None, choices=tuple(yolact.ARCHITECTURES),
                    help="default: inferred from the checkpoint (ResNet depth)")
    _add_common(yl)
    d2 = sub.add_parser("detectron2", help="a detectron2 model-zoo checkpoint (.pkl), read "
                                           "without torch")
    d2.add_argument("--config-name", required=True,
                    help="detectron2 config name, full (COCO-InstanceSegmentation/"
                         "mask_rcnn_R_50_FPN_3x) or short (mask_rcnn_R_50_FPN_3x); one of: "
                         + ", ".join(e.short_name for e in detectron2_zoo.MODEL_ZOO.values()))
    _add_common(d2)
    args = parser.parse_args(argv)

    if args.source == "yolact":
        model = yolact.from_yolact(args.checkpoint, args.arch, overrides=args.set, progress=True)
    elif args.source == "detectron2":
        model = detectron2.from_detectron2(args.checkpoint, args.config_name,
                                           overrides=args.set, progress=True)
    else:
        logging.getLogger("keras_maskrcnn.convert.torchvision_models").setLevel(logging.INFO)
        logging.basicConfig(format="%(message)s")
        model = from_torchvision(args.checkpoint, args.arch, overrides=args.set, progress=True,
                                 weights=args.weights)
    os.makedirs(args.output, exist_ok=True)
    weights = os.path.join(args.output, "model.weights.h5")
    model.save_weights(weights)
    config_path = os.path.join(args.output, "config.yaml")
    if args.source == "detectron2":  # its training settings too, for fine-tuning
        cfg = detectron2_zoo.zoo_config(args.config_name, model.num_classes, args.set)
    else:
        cfg = converted_config(model)
    config_lib.save_config(cfg, config_path)
    print(f"wrote {weights} and {config_path}")


if __name__ == "__main__":
    main()
