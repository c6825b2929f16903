"""Predict at scale: the detections of many images (a folder, a glob, a video's frames) as COCO
results, drawings and an annotated video (``python -m keras_maskrcnn.predict --input``).

``predict_to_directory`` runs the model in batches (``batch_inference.BatchDetector``) and
writes into its output directory:
    * ``results.json``: COCO results format (a list, as ``COCO.loadRes`` reads it), every
      detection with score >= ``score_threshold``, in image order: ``image_id``,
      ``file_name``, (video) ``frame_index``, ``category_id`` (the dataset's id,
      ``model.category_ids``), ``category_name`` (``model.category_names``; null when the
      model has none), ``score``, ``bbox`` [x, y, w, h] in original-image pixels (w = x2 - x1),
      and as ``evaluation.detections_to_coco_results`` writes them ``segmentation`` (compressed
      RLE whose ``size`` is the original image's [height, width]) and ``keypoints``
      [x, y, score] * Kp (detections of a class with keypoints).
    * ``images.json``: a COCO dataset without annotations: ``images`` (id, file_name, height,
      width, and frame_index for a video) and ``categories`` (id, name), so that
      ``COCO("images.json").loadRes("results.json")`` works; ``info.skipped`` names the
      inputs that could not be decoded (each also a warning).
    * drawings (detections with score >= ``draw_threshold``): ``<file_name>`` with its suffix
      replaced by ``.png`` (kept, then ``.png`` added, when two inputs would share a name); a
      video gives ``<stem>.annotated.mp4`` with one frame per input frame (``media``).
    * with ``per_image_json``: ``per_image/<drawing name>.json`` holding the image's entry of
      images.json and its results.
Image ids are 1..N in input order (sorted paths; video: frame index + 1). Images are read with
``keras_maskrcnn.data.images.read_image`` (EXIF orientation ignored, as in training and
serving; images over ``max_image_pixels`` are skipped from their header),
so boxes and masks are in the pixels of the image as stored.
"""
import json
import os
import warnings

import numpy as np
from tqdm import tqdm

from keras_maskrcnn import evaluation, inference, media, visualize
from keras_maskrcnn.batch_inference import BatchDetector


def category_names_map(model, fallback=None):
    """{dataset id: name}: ``model.category_names`` paired with ``model.category_ids`` (or the
    contiguous ids 1..K-1), else ``fallback`` (a mapping), else {}."""
    if model.category_names is not None:
        ids = model.category_ids or range(1, len(model.category_names) + 1)
        return dict(zip((int(i) for i in ids), model.category_names))
    return dict(fallback or {})


def coco_records(image, result, names, score_threshold, drop_empty_boxes=False):
    """COCO result dicts (module docstring) of one image's detections with score >= threshold.

    Args:
        image: its images.json entry (id, file_name, optionally frame_index).
        result: a ``detect`` result (labels = dataset ids).
        names: {dataset id: name}.
    """
    keep = np.asarray(result["scores"]).reshape(-1) >= score_threshold  # (n,)
    kept = {k: np.asarray(v)[keep] for k, v in result.items()}
    head = {"image_id": image["id"], "file_name": image["file_name"]}
    if "frame_index" in image:
        head["frame_index"] = image["frame_index"]
    records = []
    for r in evaluation.detections_to_coco_results(image["id"], kept,
                                                   drop_empty_boxes=drop_empty_boxes):
        del r["image_id"]
        records.append({**head, "category_id": r["category_id"],
                        "category_name": names.get(r["category_id"]), **r})
    return records


def drawing_names(file_names):
    """Output names of the drawings: suffix replaced by .png, kept where that collides."""
    stems = [os.path.splitext(n)[0] + ".png" for n in file_names]
    counts = {s: stems.count(s) for s in stems}
    return [s if counts[s] == 1 else n + ".png" for s, n in zip(stems, file_names)]


def batch_detector(model, batch_size):
    """The model's ``BatchDetector`` for ``batch_size`` (cached: its functions are traced
    once)."""
    cache = model.__dict__.setdefault("_batch_detectors", {})
    if batch_size not in cache:
        cache[batch_size] = BatchDetector(model, batch_size)
    return cache[batch_size]


def _image_items(entries, skipped, max_pixels):
    from keras_maskrcnn.data import images

    for index, (path, file_name) in enumerate(entries):
        try:
            yield index, images.read_image(path, images.DEFAULT_MAX_IMAGE_PIXELS
                                           if max_pixels is None else max_pixels)
        except ValueError as e:
            skipped.append(file_name)
            warnings.warn(f"skipping {path}: {e}", stacklevel=2)


def _write_json(path, data):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)  # no half-written file on interruption


class _VideoOut:
    """Writes drawn frames in frame order (batches may complete out of order)."""

    def __init__(self, path, rate):
        self.writer, self.pending, self.next = media.VideoWriter(path, rate), {}, 0

    def add(self, index, frame):
        self.pending[index] = frame
        while self.next in self.pending:
            self.writer.write(self.pending.pop(self.next))
            self.next += 1


class _Outputs:
    """Everything ``predict_to_directory`` writes for each image, and the collected results."""

    def __init__(self, output_dir, kind, entries, names, settings, video=None):
        self.output_dir, self.kind, self.entries, self.names = output_dir, kind, entries, names
        self.settings, self.video = settings, video
        self.drawings = drawing_names([n for _, n in entries])
        self.records, self.images = [], []

    def add(self, key, image, result):
        s, video = self.settings, self.kind == "video"
        entry = {"id": key + 1, "file_name": self.entries[0 if video else key][1],
                 "height": int(image.shape[0]), "width": int(image.shape[1])}
        if video:
            entry["frame_index"] = key
        records = coco_records(entry, result, self.names, s["score_threshold"],
                               s["drop_empty"])
        self.records.extend(records)
        self.images.append(entry)
        name = self.drawings[key] if not video else f"{self.drawings[0][:-4]}_{key:06d}.png"
        if s["per_image_json"]:
            path = os.path.join(self.output_dir, "per_image", name[:-4] + ".json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_json(path, {**entry, "detections": records})
        if s["draw"]:
            picture = visualize.draw_detections(
                image, result, self.names or None, keypoint_skeleton=s["keypoint_skeleton"],
                score_threshold=s["draw_threshold"])
            if self.video is not None:
                self.video.add(key, picture)
            else:
                visualize.save_png(picture, os.path.join(self.output_dir, self.drawings[key]))


def predict_to_directory(model, kind, entries, output_dir, score_threshold=0.5,
                         draw_threshold=None, batch_size=4, per_image_json=False, draw=True,
                         class_names=None, keypoint_skeleton=None, progress=True,
                         max_image_pixels=None):
    """Runs ``model`` on ``entries`` and writes the module docstring's files.

    Args:
        model: a built detector.
        kind, entries: ``media.list_inputs``' result ("video": one (path, file_name)).
        output_dir: created if needed.
        score_threshold: results.json keeps detections with score >= it.
        draw_threshold: drawings show detections with score >= it (None: score_threshold).
        batch_size: images per model call; per_image_json, draw: outputs to write.
        class_names: {dataset id: name} when the model has no ``category_names``.
        keypoint_skeleton: keypoint index pairs drawn as lines.
        max_image_pixels: images over it are skipped (None: ``input.max_image_pixels``'
            default).

    Returns:
        {"results": results.json's list, "images": images.json's images, "skipped": names,
        "output_video": path or None}.
    """
    os.makedirs(output_dir, exist_ok=True)
    names = category_names_map(model, class_names)
    settings = {"score_threshold": score_threshold, "per_image_json": per_image_json,
                "draw_threshold": score_threshold if draw_threshold is None else draw_threshold,
                "drop_empty": inference.mask_type(model) == "image", "draw": draw,
                "keypoint_skeleton": keypoint_skeleton}
    skipped, video = [], None
    if kind == "video":
        path = entries[0][0]
        info = media.video_info(path)
        items, total = enumerate(media.read_video_frames(path)), info["frames"] or None
        if draw:
            stem = os.path.splitext(os.path.basename(path))[0]
            video = _VideoOut(os.path.join(output_dir, stem + ".annotated.mp4"), info["rate"])
    else:
        if draw:
            _check_not_inputs(entries, output_dir, drawing_names([n for _, n in entries]))
        items, total = _image_items(entries, skipped, max_image_pixels), len(entries)
    out = _Outputs(output_dir, kind, entries, names, settings, video)
    try:
        for key, (image, result) in tqdm(batch_detector(model, batch_size).run(items),
                                         total=total, unit="img", desc="predicting",
                                         disable=not progress):
            out.add(key, image, result)
    finally:
        if video is not None:
            video.writer.close()
    if kind == "video" and not out.images:
        raise ValueError(f"{entries[0][0]}: no video frame could be decoded")
    out.images.sort(key=lambda e: e["id"])
    out.records.sort(key=lambda r: r["image_id"])  # stable: each image's order kept
    categories = [{"id": i, "name": names.get(i)} for i in _category_ids(model, names)]
    _write_json(os.path.join(output_dir, "results.json"), out.records)
    _write_json(os.path.join(output_dir, "images.json"),
                {"images": out.images, "categories": categories, "info": {"skipped": skipped}})
    return {"results": out.records, "images": out.images, "skipped": skipped,
            "output_video": video.writer.path if video is not None else None}


def _category_ids(model, names):
    """The dataset ids of the model's classes (those of ``names`` when the model has none)."""
    if model.category_ids is not None:
        return list(model.category_ids)
    return sorted(names) or list(range(1, model.num_classes))


def _check_not_inputs(entries, output_dir, names):
    """Raises ValueError when a drawing would overwrite one of the inputs."""
    inputs = {os.path.realpath(p) for p, _ in entries}
    for name in names:
        path = os.path.realpath(os.path.join(output_dir, name))
        if path in inputs:
            raise ValueError(f"--output {output_dir}: the drawing {name} would overwrite the "
                             "input image of that name; choose another output directory")
