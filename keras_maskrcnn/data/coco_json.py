"""COCO annotation JSON (data input, no paper section): reading, validation, bad annotations.

Conventions pinned here (tests/data/test_data_coco.py and tests/data/test_data_tfrecord.py check
them):
    * File-level problems are errors (``CocoFormatError``, the message names the file, the
      element and the field): an unreadable file, malformed JSON, a top level that is not an
      object, a missing or mistyped ``images`` / ``categories`` section (``annotations`` may be
      absent: no annotations, e.g. a test-split image list), bad image records (id,
      file_name, height, width; sizes <= 0; duplicate ids) and bad categories.
    * A defect of ONE annotation (``REASONS``: a box of width or height <= 0 or fully outside
      its image, a polygon of fewer than 3 points, an empty segmentation, an image_id absent
      from ``images``, an unknown category_id, a missing or malformed field) is, by default
      (lenient: torchvision's references drop degenerate boxes, detectron2 instances without a
      valid polygon), left out: the annotation is dropped whole, counted and listed in an
      ``AnnotationReport``. ``strict=True`` makes the
      first one an error ``"<file>: annotation <id>: <field>: <problem>"``
      (``"<file>: annotations[<i>] (no id): ..."`` when the annotation has no id).
    * Each annotation gets one reason: the first defect in ``REASONS`` order.
    * Not defects: crowd regions, boxes under 1 pixel after clipping to the image (the loaders
      drop and count those in their stats, as before), an annotation without a
      ``segmentation`` key (its box becomes the mask), one without ``keypoints`` (v = 0).

Shape shorthand: none (Python dicts and lists as in the file).
"""
import dataclasses
import json
import math
from typing import Dict, List

# Reasons an annotation is left out (lenient) or rejected (strict), in the order checked.
NOT_AN_OBJECT = "annotation: not an object"
BAD_IMAGE_ID = "image_id: missing or malformed"
MISSING_IMAGE = "image_id: not in images"
BAD_CATEGORY_ID = "category_id: missing or malformed"
UNKNOWN_CATEGORY = "category_id: unknown"
BAD_BBOX = "bbox: missing or malformed"
NON_POSITIVE_BOX = "bbox: width or height <= 0"
BOX_OUTSIDE_IMAGE = "bbox: outside the image"
BAD_CROWD = "iscrowd: malformed"
BAD_SEGMENTATION = "segmentation: malformed"
SHORT_POLYGON = "segmentation: polygon of < 3 points"
EMPTY_SEGMENTATION = "segmentation: empty"
BAD_KEYPOINTS = "keypoints: malformed"
REASONS = (NOT_AN_OBJECT, BAD_IMAGE_ID, MISSING_IMAGE, BAD_CATEGORY_ID, UNKNOWN_CATEGORY,
           BAD_BBOX, NON_POSITIVE_BOX, BOX_OUTSIDE_IMAGE, BAD_CROWD, BAD_SEGMENTATION,
           SHORT_POLYGON, EMPTY_SEGMENTATION, BAD_KEYPOINTS)


class CocoFormatError(ValueError):
    """A malformed COCO file; the message names the file, the element and the field."""


@dataclasses.dataclass
class AnnotationReport:
    """The annotations of a COCO file left out for a defect (lenient mode), by reason.

    Attributes:
        annotation_file: the file.
        num_annotations: annotations in the file (kept and left out).
        dropped: {reason (one of ``REASONS``): ids of its annotations, in file order}; an
            annotation without an ``id`` is listed as ``"annotations[i]"``.
        first_problem: {reason: the message of its first annotation, e.g. "annotation 17:
            bbox: width -3.0 must be > 0 (bbox [...])"}.
    """

    annotation_file: str
    num_annotations: int = 0
    dropped: Dict[str, list] = dataclasses.field(default_factory=dict)
    first_problem: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of annotations left out."""
        return sum(len(ids) for ids in self.dropped.values())

    @property
    def counts(self) -> Dict[str, int]:
        """{reason: number of annotations left out for it}."""
        return {reason: len(ids) for reason, ids in self.dropped.items()}

    def add(self, reason, annotation_id, message):
        """Lists one annotation left out for ``reason``; ``message`` says what is wrong."""
        self.dropped.setdefault(reason, []).append(annotation_id)
        self.first_problem.setdefault(reason, message)

    def summary(self, max_ids=5) -> str:
        """One text: the total, then per reason its count, its first ``max_ids`` annotation
        ids and its first message (the one line ``"<file>: N annotations, none left out"`` for
        a clean file)."""
        head = f"{self.annotation_file}: {self.num_annotations} annotations"
        if not self.total:
            return head + ", none left out"
        lines = [f"{head}, {self.total} left out for defects (strict mode, data.strict: true "
                 "or --strict, makes them errors):"]
        for reason in sorted(self.dropped, key=REASONS.index):
            ids = self.dropped[reason]
            shown = ", ".join(str(i) for i in ids[:max_ids]) + (", ..." if len(ids) > max_ids
                                                                else "")
            lines.append(f"  {reason}: {len(ids)} (ids {shown}; first: "
                         f"{self.first_problem[reason]})")
        return "\n".join(lines)


@dataclasses.dataclass
class CocoJson:
    """A read and validated COCO file.

    Attributes:
        path: the file. data: the parsed JSON (all of it, as written).
        images: {image id: image record}. categories: {category id: category}.
        annotations: {image id: its usable annotations, file order} (every image id present).
        report: ``AnnotationReport`` of the annotations left out.
    """

    path: str
    data: dict
    images: Dict[int, dict]
    categories: Dict[int, dict]
    annotations: Dict[int, List[dict]]
    report: AnnotationReport


# ----------------------------------------------------------------------------- file level
class _Checker:
    """Raises CocoFormatError("<file>: <where>: <problem>")."""

    def __init__(self, path):
        self.path = path

    def fail(self, where, problem):
        raise CocoFormatError(f"{self.path}: {where}: {problem}")

    def field(self, obj, key, where, kinds, optional=False):
        if not isinstance(obj, dict):
            self.fail(where, f"expected an object, got {type(obj).__name__}")
        problem = _field_problem(obj, key, kinds, optional)
        if problem:
            self.fail(where, problem)
        return obj.get(key)


def _field_problem(obj, key, kinds, optional):
    """None when ``obj[key]`` is of ``kinds`` (or absent and ``optional``), else the problem."""
    if key not in obj:
        return None if optional else f"missing field {key!r}"
    value = obj[key]
    if isinstance(value, kinds) and not isinstance(value, bool):
        return None
    names = "/".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
    return f"field {key!r} must be {names}, got {value!r:.60}"


def read_json(path):
    """The parsed JSON of ``path``; CocoFormatError when unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise CocoFormatError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: invalid JSON: {e}") from None


def _check_top_level(chk, data):
    if not isinstance(data, dict):
        chk.fail("top level", f"expected an object, got {type(data).__name__}")


def _check_images(chk, data):
    """{image id: image} of a validated ``images`` section."""
    images = {}
    for i, image in enumerate(chk.field(data, "images", "top level", list)):
        where = f"images[{i}]"
        image_id = chk.field(image, "id", where, int)
        where += f" (id {image_id})"
        chk.field(image, "file_name", where, str)
        for key in ("height", "width"):
            if chk.field(image, key, where, int) <= 0:
                chk.fail(where, f"{key!r} must be positive, got {image[key]}")
        if image_id in images:
            chk.fail(where, f"duplicate image id {image_id}")
        images[image_id] = image
    return images


def _check_categories(chk, data):
    """{category id: category} of a validated, non-empty ``categories`` section."""
    categories = {}
    for i, cat in enumerate(chk.field(data, "categories", "top level", list)):
        where = f"categories[{i}]"
        cat_id = chk.field(cat, "id", where, int)
        chk.field(cat, "name", where + f" (id {cat_id})", str)
        if cat_id in categories:
            chk.fail(where, f"duplicate category id {cat_id}")
        categories[cat_id] = cat
    if not categories:
        chk.fail("categories", "no categories")
    return categories


def read_categories(path) -> List[dict]:
    """The validated ``categories`` of a COCO file (the rest of it is not checked)."""
    chk = _Checker(path)
    data = read_json(path)
    _check_top_level(chk, data)
    return list(_check_categories(chk, data).values())


# ----------------------------------------------------------------------------- annotations
class _Defect(Exception):
    """A defect of one annotation: ``reason`` (one of REASONS) and the problem in words."""

    def __init__(self, reason, problem):
        super().__init__(problem)
        self.reason, self.problem = reason, problem


def _get(obj, key, kinds, reason, optional=False):
    problem = _field_problem(obj, key, kinds, optional)
    if problem:
        raise _Defect(reason, problem)
    return obj.get(key)


def _is_number(v):
    return type(v) in (int, float) and math.isfinite(v)  # type(): bool is not a number


def _all_numbers(values):
    """Fast check for long lists (polygons): every value an int or float (finite)."""
    return all(type(v) in (int, float) for v in values) and math.isfinite(sum(values))


def _check_bbox(bbox, image):
    if len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise _Defect(BAD_BBOX, f"must be 4 numbers [x, y, width, height], got {bbox!r:.80}")
    x, y, w, h = bbox
    for name, size in (("width", w), ("height", h)):
        if size <= 0:
            raise _Defect(NON_POSITIVE_BOX, f"{name} {size} must be > 0 (bbox {bbox})")
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        raise _Defect(BOX_OUTSIDE_IMAGE, f"{bbox} lies outside the {image['width']}x"
                                         f"{image['height']} image {image['id']}")


def _check_polygons(segm):
    if not segm:
        raise _Defect(EMPTY_SEGMENTATION, "an empty list (no polygon)")
    for j, poly in enumerate(segm):
        if not isinstance(poly, list) or not _all_numbers(poly):
            raise _Defect(BAD_SEGMENTATION, f"polygon {j} must be a list of numbers")
        if len(poly) % 2:
            raise _Defect(BAD_SEGMENTATION, f"polygon {j} has an odd number of coordinates "
                                            f"({len(poly)})")
        if len(poly) < 6:
            raise _Defect(SHORT_POLYGON, f"polygon {j} has {len(poly) // 2} points, needs >= 3")


def compressed_rle_counts(counts):
    """Run lengths of a compressed RLE ``counts`` string (pycocotools' ``rleFrString``
    encoding: each count in 5-bit groups, low first, as characters 48 + group with bit 0x20
    meaning "more groups follow" and bit 0x10 of the last group the sign; counts after the
    second are stored as the difference to the count two before).

    Returns:
        list of int run lengths (0s, 1s, 0s, ...). Raises ValueError for a character outside
        '0'..'o', a count cut off mid-way or a negative run.
    """
    runs, value, shift = [], 0, 0
    for position, char in enumerate(counts):
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise ValueError(f"character {char!r} at {position} is not in '0'..'o'")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"run {len(runs)} is negative ({value})")
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("the string ends inside a count")
    return runs


def _check_rle(segm, image):
    counts = _get(segm, "counts", (str, list), BAD_SEGMENTATION)
    size = _get(segm, "size", list, BAD_SEGMENTATION)
    hw = [image["height"], image["width"]]
    if list(size) != hw:
        raise _Defect(BAD_SEGMENTATION, f"RLE size {size} differs from the image's "
                                        f"[height, width] = {hw}")
    kind = "uncompressed"
    if isinstance(counts, list):
        if not _all_numbers(counts) or any(v < 0 or v != int(v) for v in counts):
            raise _Defect(BAD_SEGMENTATION, "uncompressed RLE counts must be integers >= 0")
    else:
        kind = "compressed"
        try:
            counts = compressed_rle_counts(counts)
        except ValueError as e:
            raise _Defect(BAD_SEGMENTATION, f"compressed RLE counts: {e}") from None
    if sum(counts) != hw[0] * hw[1]:
        raise _Defect(BAD_SEGMENTATION, f"{kind} RLE counts cover {sum(counts)} pixels, "
                                        f"expected height * width = {hw[0] * hw[1]}")
    if not any(counts[1::2]):  # runs alternate 0s, 1s: no run of 1s
        raise _Defect(EMPTY_SEGMENTATION, "an RLE without foreground pixels")


def _check_annotation(ann, images, category_ids, num_keypoints):
    """Raises ``_Defect`` for the first problem of one annotation (REASONS order)."""
    if not isinstance(ann, dict):
        raise _Defect(NOT_AN_OBJECT, f"expected an object, got {type(ann).__name__}")
    image_id = _get(ann, "image_id", int, BAD_IMAGE_ID)
    if image_id not in images:
        raise _Defect(MISSING_IMAGE, f"{image_id} is not in 'images'")
    category_id = _get(ann, "category_id", int, BAD_CATEGORY_ID)
    if category_id not in category_ids:
        raise _Defect(UNKNOWN_CATEGORY, f"{category_id} is not in 'categories' "
                                        f"{sorted(category_ids)}")
    _check_bbox(_get(ann, "bbox", list, BAD_BBOX), images[image_id])
    crowd = _get(ann, "iscrowd", int, BAD_CROWD, optional=True)
    if crowd not in (None, 0, 1):
        raise _Defect(BAD_CROWD, f"must be 0 or 1, got {crowd!r}")
    segm = _get(ann, "segmentation", (list, dict), BAD_SEGMENTATION, optional=True)
    if isinstance(segm, list):
        _check_polygons(segm)
    elif segm is not None:
        _check_rle(segm, images[image_id])
    keypoints = _get(ann, "keypoints", list, BAD_KEYPOINTS, optional=True)
    if num_keypoints and keypoints is not None and not crowd:
        if len(keypoints) != 3 * num_keypoints or not _all_numbers(keypoints):
            raise _Defect(BAD_KEYPOINTS, f"must be {3 * num_keypoints} numbers "
                                         f"({num_keypoints} keypoints x [x, y, v]), got "
                                         f"{len(keypoints)} values")


def _annotation_name(ann, i):
    """(id for the report, element for messages): the id, else its place in the list."""
    if isinstance(ann, dict) and "id" in ann:
        return ann["id"], f"annotation {ann['id']}"
    return f"annotations[{i}]", f"annotations[{i}] (no id)"


def read_coco_json(path, num_keypoints=0, strict=False) -> CocoJson:
    """Reads and validates a COCO instances / person_keypoints JSON.

    Args:
        path: the file.
        num_keypoints: Kp > 0 checks the annotations' ``keypoints`` (3 * Kp numbers).
        strict: False (default) leaves annotations with a defect out and lists them in the
            report; True raises ``CocoFormatError`` for the first one.

    Returns:
        ``CocoJson``. Raises ``CocoFormatError`` on file-level problems (module docstring).
    """
    chk = _Checker(path)
    data = read_json(path)
    _check_top_level(chk, data)
    images = _check_images(chk, data)
    categories = _check_categories(chk, data)
    annotations = chk.field(data, "annotations", "top level", list, optional=True) or []
    report = AnnotationReport(path, num_annotations=len(annotations))
    per_image: Dict[int, List[dict]] = {image_id: [] for image_id in images}
    for i, ann in enumerate(annotations):
        try:
            _check_annotation(ann, images, categories, num_keypoints)
        except _Defect as defect:
            ann_id, where = _annotation_name(ann, i)
            field = defect.reason.split(":")[0]
            message = f"{where}: {field}: {defect.problem}"
            if strict:
                raise CocoFormatError(f"{path}: {message}") from None
            report.add(defect.reason, ann_id, message)
            continue
        per_image[ann["image_id"]].append(ann)
    return CocoJson(path, data, images, categories, per_image, report)

