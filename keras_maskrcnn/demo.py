"""Forward pass of a Mask R-CNN on a real photo: ``python -m keras_maskrcnn.demo``.

Builds the model of a config (default ``configs/tiny.yaml``-like settings shipped in the
package: a narrow ResNet-18-FPN with box, mask and keypoint heads, randomly initialised, or
weights from ``--weights``), runs ``model.detect`` on a photo (default: the bundled
astronaut picture) and prints what came out and how long it took.
"""
import argparse
import os
import time

import numpy as np

from keras_maskrcnn import builders, config
from keras_maskrcnn.convert import weights
from keras_maskrcnn.data import images

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
DEMO_OVERRIDES = (
    "model.backbone.name=resnet18", "model.backbone.width_multiplier=0.25",
    "model.fpn.channels=32", "model.box_head.fc_dim=128", "model.mask_head.conv_dim=32",
    "model.mask_head.num_convs=2", "model.keypoint_head.enabled=true",
    "model.keypoint_head.conv_dim=32", "model.keypoint_head.num_convs=2",
    "model.rpn.pre_nms_top_n_test=300", "model.rpn.post_nms_top_n_test=300",
    "model.roi_heads.score_threshold=0.0", "input.min_size_train=[256]", "input.min_size_test=256", "input.max_size=320",
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (default: a tiny built-in model)")
    parser.add_argument("--weights", help=".weights.h5 file to load")
    parser.add_argument("--image", default=os.path.join(ASSETS, "astronaut.jpg"))
    args = parser.parse_args(argv)

    if args.config:
        cfg = config.load_config(args.config)
    else:
        cfg = config.apply_overrides(config.Config(), DEMO_OVERRIDES, source="demo")
    model = builders.build_model(cfg)
    if args.weights:
        weights.load_weights(model, args.weights)
    else:
        weights.load_initial_weights(model, cfg.model)
    image = images.read_image(args.image, cfg.input.max_image_pixels)  # the training reader
    start = time.perf_counter()
    result = model.detect([image])[0]
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.detect([image])
    second = time.perf_counter() - start
    print(f"image {args.image}: {image.shape[1]}x{image.shape[0]} px")
    print(f"model: {model.count_params():,} parameters "
          f"({'random weights' if not args.weights else args.weights})")
    for key, value in result.items():
        print(f"  {key:10s} {value.dtype} {tuple(value.shape)}")
    if len(result["scores"]):
        print(f"  top score {float(np.max(result['scores'])):.3f}")
    print(f"detect: first call (traces) {first:.1f} s, second call {second * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
