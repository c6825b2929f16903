"""TFRecords in the TF Object Detection API / Model Garden tf.Example schema: the public names
of the writer (``tfrecord_writer``), the reader (``tfrecord_reader``) and the keys
(``tfrecord_schema``), and the writer's command line ``python -m keras_maskrcnn.data.tfrecord``
(data input, no paper section; conventions in each module's docstring).

Shape shorthand: none (files and command-line arguments).
"""
import argparse
import json
import os

from keras_maskrcnn.data.tfrecord_reader import TFRecordSource, load_tfrecords  # noqa: F401
from keras_maskrcnn.data.tfrecord_records import _image_id, record_orientation  # noqa: F401
from keras_maskrcnn.data.tfrecord_schema import FEATURE_KEYS, shard_paths  # noqa: F401
from keras_maskrcnn.data.tfrecord_writer import encode_mask_png, write_tfrecords  # noqa: F401


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="COCO json + images -> TFRecords in the Model Garden / TF Object Detection "
                    "API tf.Example schema (image/encoded, image/object/bbox/*, "
                    "image/object/mask PNGs, image/object/keypoint/*).")
    parser.add_argument("--annotations", required=True, help="COCO instances json")
    parser.add_argument("--images", required=True, help="image directory")
    parser.add_argument("--output", required=True,
                        help="output prefix: PREFIX-00000-of-0000N.tfrecord ...")
    parser.add_argument("--shards", type=int, default=32, help="number of files (default 32)")
    parser.add_argument("--keypoints", type=int, default=0,
                        help="keypoints per object to write (0: none; 17 for COCO persons)")
    parser.add_argument("--mask-crop-size", type=int, default=None, metavar="C",
                        help="also write each object's C x C mask crop (image/object/mask_crop,"
                             " ignored by Model Garden's decoder), read by training with "
                             "input.gt_mask_format: cropped and gt_mask_size C instead of the "
                             "full-size PNGs (default: not written)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first annotation with a defect (a box of size <= 0 "
                             "or outside its image, a polygon of < 3 points, an empty "
                             "segmentation, an unknown image or category id, a malformed "
                             "field) instead of leaving it out")
    args = parser.parse_args(argv)
    try:
        stats = write_tfrecords(args.annotations, args.images, args.output, args.shards,
                                args.keypoints, progress=not args.no_progress,
                                strict=args.strict, mask_crop_size=args.mask_crop_size)
    except ValueError as e:  # coco_json.CocoFormatError among them
        parser.exit(2, f"error: {e}\n")
    left_out = [f"{stats['num_degenerate']} boxes under 1 pixel"]
    if stats["report"].total:
        left_out.append(f"{stats['report'].total} annotations with a defect (listed above)")
    if stats["missing_images"]:
        left_out.append(f"{len(stats['missing_images'])} missing images")
    if stats["bad_images"]:
        left_out.append(f"{len(stats['bad_images'])} unreadable or mis-sized images (first: "
                        f"{stats['bad_images'][0][0]}: {stats['bad_images'][0][1]})")
    print(f"wrote {stats['num_images']} images, {stats['num_objects']} objects "
          f"({stats['num_crowd']} crowd) to {len(stats['files'])} files "
          f"{stats['files'][0]} ...; left out {', '.join(left_out)}")
    print(f"read with data.<split>: {{format: tfrecord, tfrecords: '{args.output}-*.tfrecord',"
          f" annotations: {json.dumps(os.fspath(args.annotations))}}}")
    return 0


if __name__ == "__main__":
    main()
