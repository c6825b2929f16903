"""A COCO file with one annotation of each defect, shared by the coco and tfrecord tests."""
import json

from keras_maskrcnn.data import coco_json as J
from keras_maskrcnn.data import synthetic

_SQUARE = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10], "iscrowd": 0,
           "area": 100, "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]],
           "keypoints": [15, 10, 2, 20, 15, 2, 15, 20, 2, 10, 15, 2]}
# One edit of _SQUARE per defect (None deletes the field); the first is the first in the file.
_DEFECTS = {
    J.NON_POSITIVE_BOX: {"bbox": [10, 10, -3, 5]}, J.NOT_AN_OBJECT: None,
    J.BAD_IMAGE_ID: {"image_id": "1"}, J.MISSING_IMAGE: {"image_id": 999},
    J.BAD_CATEGORY_ID: {"category_id": None}, J.UNKNOWN_CATEGORY: {"category_id": 2},
    J.BAD_BBOX: {"bbox": [10, 10, 10]}, J.BOX_OUTSIDE_IMAGE: {"bbox": [70, 10, 5, 5]},
    J.BAD_CROWD: {"iscrowd": 2}, J.BAD_SEGMENTATION: {"segmentation": [[10, 10, 20, 10, 20]]},
    J.SHORT_POLYGON: {"segmentation": [[10, 10, 20, 20]]},
    J.EMPTY_SEGMENTATION: {"segmentation": []}, J.BAD_KEYPOINTS: {"keypoints": [15, 10, 2]},
}


def write_defective_file(root):
    """A 28-annotation COCO file of 64 px synthetic shapes: 15 good annotations with one
    annotation of each of the 13 defects (``coco_json.REASONS``) after each of the first 13.

    Returns:
        dict: bad (the json), clean (the same without the 13), images (directory),
        ids ({reason: the id listed for its annotation}), good (the 15 annotations).
    """
    ann_file, image_dir = synthetic.write_synthetic_dataset(
        str(root / "shapes"), 10, 0, seed=3, image_size=64)["train"]
    with open(ann_file) as f:
        data = json.load(f)
    good = data["annotations"][:15]
    assert len(good) == 15 and set(J.REASONS) == set(_DEFECTS)
    annotations, ids = [], {}
    for i, ann in enumerate(good):
        annotations.append(ann)
        if i < len(_DEFECTS):
            reason, edit = list(_DEFECTS.items())[i]
            if edit is None:  # not an object: listed by its place in the list
                ids[reason] = f"annotations[{len(annotations)}]"
                annotations.append([1, 2, 3])
                continue
            bad = dict(_SQUARE, id=1000 + i, **edit)
            bad = {k: v for k, v in bad.items() if v is not None}
            ids[reason] = bad["id"]
            annotations.append(bad)
    assert len(annotations) == 28
    paths = {"bad": str(root / "instances.json"), "clean": str(root / "clean.json")}
    for key, anns in (("bad", annotations), ("clean", good)):
        with open(paths[key], "w") as f:
            json.dump(dict(data, annotations=anns), f)
    return dict(paths, images=image_dir, ids=ids, good=good)


def write_mixed_orientation_dataset(root, num_images, num_tfrecord_files=0, seed=0):
    """Synthetic shapes (96 px, 4 keypoints) padded to 96 x 128 (landscape) or 128 x 96
    (portrait: images 2, 5, 8, ...): aspect-ratio grouping has two kinds of windows to fill.

    Returns:
        dict: annotations (json), images (directory), ids (image ids), portrait (their ids),
        tfrecords (a glob of ``num_tfrecord_files`` files written from them, or None).
    """
    import numpy as np
    from PIL import Image

    from keras_maskrcnn.data import coco, tfrecord

    ann_file, image_dir = synthetic.write_synthetic_dataset(
        str(root / "mixed"), num_images, 0, seed=seed, image_size=96)["train"]
    with open(ann_file) as f:
        data = json.load(f)
    portrait = set()
    for image in data["images"]:
        path = f"{image_dir}/{image['file_name']}"
        pixels = np.asarray(Image.open(path).convert("RGB"))
        tall = image["id"] % 3 == 2
        padded = np.full((128, 96, 3) if tall else (96, 128, 3), 100, np.uint8)
        padded[:96, :96] = pixels  # bottom or right padding: the annotations do not move
        Image.fromarray(padded).save(path, **({"quality": 92} if path.endswith("jpg") else {}))
        image["height"], image["width"] = padded.shape[:2]
        portrait |= {image["id"]} if tall else set()
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    for ann in data["annotations"]:
        if isinstance(ann["segmentation"], dict):  # a crowd RLE: re-encoded at the new size
            mask = np.zeros(sizes[ann["image_id"]], np.uint8)
            mask[:96, :96] = coco.decode_segmentation(ann["segmentation"], 96, 96)
            ann["segmentation"] = synthetic._uncompressed_rle(mask)
    with open(ann_file, "w") as f:
        json.dump(data, f)
    records = None
    if num_tfrecord_files:
        prefix = str(root / "mixed" / "records" / "train")
        tfrecord.write_tfrecords(ann_file, image_dir, prefix, num_tfrecord_files,
                                 len(synthetic.KEYPOINT_NAMES), progress=False)
        records = prefix + "-*.tfrecord"
    return {"annotations": ann_file, "images": image_dir, "tfrecords": records,
            "ids": [image["id"] for image in data["images"]], "portrait": portrait}
