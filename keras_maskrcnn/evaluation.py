"""COCO evaluation (pycocotools ``COCOeval``) of bounding boxes, instance masks and keypoints.

Shape shorthand: n detections of one image; H, W its original size; Kp keypoints.

Conventions pinned here (tests/integration/test_evaluation.py checks them):
    * Results follow torchvision's reference ``coco_eval``: one result dict per detection with
      ``image_id``, ``category_id`` (the dataset's id), ``score`` (the box score), ``bbox``
      [x, y, w, h] with w = x2 - x1 (no +1), ``segmentation`` compressed RLE (``counts`` a
      str) of the pasted (n, H, W) bool mask, ``keypoints`` [x, y, v] * Kp in original pixels
      with v the keypoint's heatmap score (COCOeval reads only x and y; a detection's score is
      the box score, as torchvision). The model's ``keypoint_head.coordinate_offset`` (e.g.
      detectron2's -0.5: its COCO evaluator subtracts half a pixel) is added to x and y here,
      in the results only, by ``model.postprocessor.coco_detections``; ``detect`` and the
      exports return the predictor's coordinates (0 by default: our COCO reader adds no
      shift). Detections whose keypoints are absent (score -inf: their class has none,
      ``model.keypoint_head.category_ids``) get no ``keypoints`` field.
    * ``run_coco_eval`` gives each iou type only its own field (as torchvision), so the detected
      area COCOeval uses for area ranges is the box area (bbox), the mask area (segm) or the
      keypoints' extent (keypoints).
    * Keypoints are evaluated on the categories whose ``keypoints`` list is non-empty. COCOeval's
      OKS needs one sigma per keypoint: COCO's standard 17 sigmas when Kp == 17, otherwise
      ``DEFAULT_KPT_OKS_SIGMA`` (0.05, between COCO's face (0.025-0.035) and body
      (0.06-0.107) sigmas) for every keypoint, unless ``kpt_oks_sigmas`` is given.
    * YOLACT (``mask_type == "image"``): detections whose integer box has zero area are left
      out, as the reference's evaluation does.
    * Empty results: ``COCO.loadRes`` cannot load an empty list, so that iou type gets every
      metric 0.0 and ``metrics["info"]["notes"][iou_type]`` says why. COCOeval's -1 (no GT in
      an area range) is kept as -1.
    * Per-category AP (``per_category_ap``; metrics["per_category"], metrics.json and a
      printed table with the GT's category names): COCOeval's ``eval["precision"]`` at area
      "all" and the last maxDets, averaged over IoU 0.5:0.95 and recall without the -1
      entries; None for a category without GT.
    * ``evaluate_model`` evaluates only the images it ran (``max_images``, unreadable images
      skipped): ``params.imgIds`` is set to them, so unevaluated images do not count as misses.
"""
import contextlib
import copy
import io
import json
import logging
import os
import time
import warnings

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from keras_maskrcnn import inference

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm", "keypoints")
DETECTION_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                   "ARm", "ARl")  # COCOeval.stats order for bbox and segm
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
DEFAULT_KPT_OKS_SIGMA = 0.05
_RESULT_FIELDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def stat_names(iou_type):
    """Names of ``COCOeval.stats`` entries for ``iou_type``, in order."""
    return KEYPOINT_STATS if iou_type == "keypoints" else DETECTION_STATS


# ----------------------------------------------------------------------------- results
def encode_masks(masks):
    """(n, H, W) bool/uint8 masks -> list of n compressed RLE dicts, ``counts`` as str."""
    masks = np.asarray(masks)
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0))  # (H, W, n)
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str for JSON
    return rles


def detections_to_coco_results(image_id, result, label_map=None, drop_empty_boxes=False):
    """COCO result dicts for the detections of one image.

    Args:
        image_id: the image's COCO id.
        result: a dict of ``model.detect``: boxes (n, 4) xyxy original pixels, scores (n,),
            labels (n,) (or classes (n,)), optionally masks (n, H, W) bool and keypoints
            (n, Kp, 3) [x, y, score].
        label_map: None (labels are dataset category ids) or a sequence whose entry i is the
            dataset id of contiguous label i + 1.
        drop_empty_boxes: leave out detections whose box area (x2 - x1) * (y2 - y1) is not
            > 0 (YOLACT's evaluation, on its integer boxes).
    Keypoints are written as given: a model's COCO offset (detectron2's -0.5) is applied
    before, by ``model.postprocessor.coco_detections`` (``evaluate_model``).

    Returns:
        A list of n dicts: image_id, category_id, score, bbox [x, y, w, h] (w = x2 - x1), and
        when present segmentation (compressed RLE, counts str) and keypoints [x, y, v] * Kp
        (not for detections whose keypoints all have score -inf: absent).
    """
    boxes = np.asarray(result["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(result["scores"], np.float64).reshape(-1)
    labels = np.asarray(result["labels"] if "labels" in result else result["classes"],
                        np.int64).reshape(-1)
    if label_map is not None and labels.size:
        if labels.min() < 1 or labels.max() > len(label_map):
            raise ValueError(f"labels must be contiguous ids in 1..{len(label_map)} to be "
                             f"mapped, got {labels.min()}..{labels.max()}")
        labels = np.asarray(label_map, np.int64)[labels - 1]  # gather: contiguous -> dataset
    keep = np.ones(len(boxes), bool)
    if drop_empty_boxes:
        keep = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0]) > 0
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # (n, 4)
    results = [{"image_id": int(image_id), "category_id": int(c), "score": float(s),
                "bbox": b} for c, s, b in zip(labels, scores, xywh.tolist())]
    if "masks" in result:
        for item, rle in zip(results, encode_masks(np.asarray(result["masks"])[keep])):
            item["segmentation"] = rle
    if "keypoints" in result:
        keypoints = np.asarray(result["keypoints"], np.float64)[keep]
        flat = keypoints.reshape(len(keypoints), -1 if len(keypoints) else 0)  # (n, 3 Kp)
        present = np.any(keypoints[..., 2] > -np.inf, axis=-1)  # (n,) class has keypoints
        for item, kp, keep_kp in zip(results, flat.tolist(), present):
            if keep_kp:
                item["keypoints"] = kp
    return results


# ----------------------------------------------------------------------------- COCOeval
def load_coco_gt(annotations):
    """A pycocotools ``COCO`` from a JSON path or an already-loaded dict (not copied)."""
    if isinstance(annotations, COCO):
        return annotations
    if isinstance(annotations, dict):
        coco = COCO()
        coco.dataset = annotations
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    path = os.fspath(annotations)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def keypoint_categories(coco_gt):
    """(sorted category ids with a non-empty ``keypoints`` list, Kp); Kp = 0 when none.
    Raises ValueError when those categories disagree on Kp."""
    cats = [c for c in coco_gt.dataset.get("categories", []) if c.get("keypoints")]
    counts = {len(c["keypoints"]) for c in cats}
    if len(counts) > 1:
        raise ValueError(f"keypoint categories have different numbers of keypoints: {counts}")
    return sorted(c["id"] for c in cats), (counts.pop() if counts else 0)


def _ensure_num_keypoints(coco_gt, num_keypoints):
    """COCOeval reads ``keypoints`` and ``num_keypoints`` of every GT it pairs with a keypoint
    detection: a GT without keypoints gets all-zero (unlabelled) ones, then the visible count.
    """
    for ann in coco_gt.anns.values():
        if "keypoints" not in ann:
            ann["keypoints"] = [0] * (3 * num_keypoints)
        if "num_keypoints" not in ann:
            v = np.asarray(ann.get("keypoints", []), np.float64)[2::3]
            ann["num_keypoints"] = int(np.sum(v > 0))


def _kpt_sigmas(num_keypoints, kpt_oks_sigmas):
    if kpt_oks_sigmas is not None:
        sigmas = np.asarray(kpt_oks_sigmas, np.float64).reshape(-1)
        if sigmas.size == 1:
            sigmas = np.full(num_keypoints, float(sigmas[0]))
        if sigmas.size != num_keypoints:
            raise ValueError(f"kpt_oks_sigmas has {sigmas.size} values for {num_keypoints} "
                             "keypoints")
        return sigmas
    if num_keypoints == 17:
        return None  # COCOeval's standard COCO person sigmas
    return np.full(num_keypoints, DEFAULT_KPT_OKS_SIGMA)


def _results_for(iou_type, results, cat_ids=None):
    """Deep copies (loadRes mutates them) holding only the fields torchvision gives COCOeval."""
    field = _RESULT_FIELDS[iou_type]
    keep = None if cat_ids is None else set(cat_ids)
    return [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
             field: copy.deepcopy(r[field])} for r in results
            if field in r and (keep is None or r["category_id"] in keep)]


def per_category_ap(coco_eval):
    """AP of each evaluated category, from an accumulated ``COCOeval``.

    The standard reduction of ``coco_eval.eval["precision"]`` (T IoU thresholds, R recall
    points, K categories, A area ranges, M maxDets): area range "all", the last maxDets (100
    for bbox and segm, 20 for keypoints), the mean over IoU 0.5:0.95 and recall of the entries
    that are not -1. A category without GT in the evaluated images has only -1 entries: AP
    None (COCOeval's summary AP leaves it out likewise).

    Returns:
        A list of {"category_id", "name", "AP"} in ``params.catIds`` order.
    """
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    area = coco_eval.params.areaRngLbl.index("all")
    rows = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, area, -1]  # (T, R)
        p = p[p > -1]
        rows.append({"category_id": int(cat_id),
                     "name": coco_eval.cocoGt.cats.get(cat_id, {}).get("name"),
                     "AP": float(np.mean(p)) if p.size else None})
    return rows


def format_per_category(rows, iou_type):
    """The per-category AP table (lines) printed by ``run_coco_eval``."""
    width = max([len(str(r["name"])) for r in rows] + [4])
    lines = [f"Per-category {iou_type} AP (IoU 0.50:0.95, area all):",
             f"  {'id':>6s}  {'name':<{width}s}  {'AP':>6s}"]
    lines += [f"  {r['category_id']:>6d}  {str(r['name']):<{width}s}  "
              + ("   n/a" if r["AP"] is None else f"{r['AP']:6.3f}") for r in rows]
    return lines


def _evaluate_one(coco_gt, dts, iou_type, image_ids, sigmas, cat_ids):
    """Runs evaluate/accumulate/summarize (which prints the table); returns (stats,
    per-category rows)."""
    coco_dt = coco_gt.loadRes(dts)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
    if cat_ids is not None:
        coco_eval.params.catIds = list(cat_ids)
    if sigmas is not None:
        coco_eval.params.kpt_oks_sigmas = sigmas
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return [float(s) for s in coco_eval.stats], per_category_ap(coco_eval)


def run_coco_eval(coco_gt, results, iou_types=IOU_TYPES, image_ids=None, kpt_oks_sigmas=None,
                  verbose=True):
    """COCOeval evaluate/accumulate/summarize for each iou type.

    Args:
        coco_gt: pycocotools ``COCO`` (or a JSON path / dict, see ``load_coco_gt``); GT
            annotations without ``num_keypoints`` get it (count of v > 0) for keypoints.
        results: list of result dicts (``detections_to_coco_results``); not modified.
        iou_types: subset of ("bbox", "segm", "keypoints").
        image_ids: images to evaluate (None = every image of ``coco_gt``).
        kpt_oks_sigmas: None (module docstring), one float, or Kp floats.
        verbose: print COCOeval's standard tables.

    Returns:
        {iou_type: {stat name: float}} (names in ``stat_names``); "per_category": {iou_type:
        ``per_category_ap`` rows} for the evaluated types (printed as a table when verbose);
        plus "info": {"notes": {iou_type: why it was not evaluated}} when some type got zeros
        or was skipped.
    """
    coco_gt = load_coco_gt(coco_gt)
    metrics, notes = {}, {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
        cat_ids, sigmas = None, None
        if iou_type == "keypoints":
            cat_ids, num_keypoints = keypoint_categories(coco_gt)
            if not cat_ids:
                notes[iou_type] = "not evaluated: no category of the GT has keypoints"
                continue
            _ensure_num_keypoints(coco_gt, num_keypoints)
            sigmas = _kpt_sigmas(num_keypoints, kpt_oks_sigmas)
        dts = _results_for(iou_type, results, cat_ids)
        names = stat_names(iou_type)
        if not dts:
            notes[iou_type] = ("no detections: every metric set to 0 (COCO.loadRes cannot "
                               "load an empty result list)")
            warnings.warn(f"{iou_type}: {notes[iou_type]}", stacklevel=2)
            metrics[iou_type] = {name: 0.0 for name in names}
            continue
        if verbose:
            print(f"\nEvaluating {iou_type} ({len(dts)} results)")
        quiet = contextlib.redirect_stdout(io.StringIO())
        with contextlib.nullcontext() if verbose else quiet:
            stats, rows = _evaluate_one(coco_gt, dts, iou_type, image_ids, sigmas, cat_ids)
        metrics[iou_type] = dict(zip(names, stats))
        metrics.setdefault("per_category", {})[iou_type] = rows
        if verbose:
            print("\n".join(format_per_category(rows, iou_type)))
    if notes:
        metrics["info"] = {"notes": notes}
    return metrics


# ----------------------------------------------------------------------------- model
def default_iou_types(model):
    """The iou types a model's heads support: bbox, plus segm / keypoints when enabled."""
    return (("bbox",) + (("segm",) if inference.has_masks(model) else ())
            + (("keypoints",) if inference.has_keypoints(model) else ()))


def label_map_for(model, coco_gt):
    """The contiguous -> dataset id map ``evaluate_model`` applies to ``detect`` labels.

    None when the model has a mapping (``detect`` applies it) or when its classes cannot be
    matched to the JSON's categories (labels then taken as dataset ids, with a warning);
    otherwise the JSON's sorted category ids, when num_classes - 1 equals their number.
    """
    if model.category_ids is not None:
        return None
    cat_ids = sorted(coco_gt.getCatIds())
    num_classes = model.num_classes
    if num_classes - 1 == len(cat_ids):
        return cat_ids
    warnings.warn(f"the model has no category mapping and num_classes - 1 = {num_classes - 1} "
                  f"differs from the {len(cat_ids)} categories of the annotations: contiguous "
                  "labels are used as dataset category ids", stacklevel=3)
    return None


def read_image(path, image_info, max_pixels=None):
    """(H, W, 3) uint8 RGB of ``path`` (``data.images.read_image``, the training reader), or
    (None, reason) when unreadable, over ``max_pixels`` (default
    ``images.DEFAULT_MAX_IMAGE_PIXELS``) or of another size than ``image_info``'s."""
    from keras_maskrcnn.data import images

    expected = (image_info.get("height"), image_info.get("width"))
    try:
        image = images.read_image(path, images.DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None
                                  else max_pixels, None if None in expected else expected)
    except images.ImageError as e:
        return None, str(e).removeprefix(f"{path}: ")
    return image, None


def _write_json(path, data):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)  # no half-written file on interruption


def evaluate_model(model, annotations_json, images_dir, max_images=None, output_dir=None,
                   iou_types=None, kpt_oks_sigmas=None, progress=True, verbose=True,
                   max_image_pixels=None):
    """Runs ``model.detect`` on the images of a COCO JSON and evaluates with COCOeval.

    Args:
        model: a ``MaskRCNN``.
        annotations_json: COCO instances / person_keypoints JSON (path, dict or ``COCO``).
        images_dir: directory the images' ``file_name`` are relative to.
        max_images: evaluate the first N images (by id); None = all.
        output_dir: if given, results.json (COCO results) and metrics.json are written there.
        iou_types: None = ``default_iou_types(model)``.
        kpt_oks_sigmas, verbose: see ``run_coco_eval``; progress: tqdm progress bar.
        max_image_pixels: images over it are skipped (``read_image``; None: the default of
            ``input.max_image_pixels``).

    Returns:
        ``run_coco_eval``'s metrics, with "info": num_images (evaluated), num_skipped,
        skipped (file names of unreadable images, also named in a warning), seconds.
    """
    start = time.perf_counter()
    coco_gt = load_coco_gt(annotations_json)
    iou_types = tuple(iou_types or default_iou_types(model))
    label_map = label_map_for(model, coco_gt)
    images = sorted(coco_gt.dataset.get("images", []), key=lambda im: im["id"])
    images = images[:max_images] if max_images is not None else images
    results, evaluated, skipped = [], [], []
    for info in tqdm(images, desc="evaluating", unit="img", disable=not progress):
        image, reason = read_image(os.path.join(images_dir, info["file_name"]), info,
                                   max_image_pixels)
        if image is None:
            skipped.append(info["file_name"])
            logger.warning("skipping image %s: %s", info["file_name"], reason)
            continue
        detections = model.postprocessor.coco_detections(model.detect([image])[0])
        results.extend(detections_to_coco_results(
            info["id"], detections, label_map,
            drop_empty_boxes=model.postprocessor.mask_kind == "image"))
        evaluated.append(info["id"])
    if skipped:
        names = ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {images_dir}: {names}",
                      stacklevel=2)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        _write_json(os.path.join(output_dir, "results.json"), results)
    metrics = run_coco_eval(coco_gt, results, iou_types, image_ids=evaluated,
                            kpt_oks_sigmas=kpt_oks_sigmas, verbose=verbose)
    metrics.setdefault("info", {}).update(
        num_images=len(evaluated), num_skipped=len(skipped), skipped=skipped,
        num_results=len(results), seconds=round(time.perf_counter() - start, 3))
    if output_dir:
        _write_json(os.path.join(output_dir, "metrics.json"), metrics)
    return metrics


def summary_line(metrics):
    """One line: "bbox AP 0.512 | segm AP 0.431 | keypoints AP 0.602 (N images)"."""
    parts = [f"{t} AP {metrics[t]['AP']:.3f}" for t in IOU_TYPES if t in metrics]
    info = metrics.get("info", {})
    tail = f" ({info['num_images']} images" if "num_images" in info else ""
    if tail:
        tail += f", {info['num_skipped']} skipped)" if info.get("num_skipped") else ")"
    return " | ".join(parts) + tail
