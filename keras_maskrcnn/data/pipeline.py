"""tf.data input pipeline: COCO-format files -> batched, padded model inputs.

Shape shorthand:
    B  batch size
    M  GT rows per image: ``max_instances`` with a fixed padded size (``fixed_size`` or
       training without grouping); otherwise the batch's largest instance count (capped at
       ``max_instances``, at least 1), padded per batch like Hp, Wp
    Kp keypoints per instance
    Hp, Wp  padded image size. Training with ``group_by_aspect_ratio`` (the config default,
            torchvision's reference recipe): every batch holds images of one orientation
            (landscape h <= w after resizing, square included; or portrait) and is padded to
            its largest image rounded up to size_divisor, at most (Hs, Wl) or (Wl, Hs) with
            Hs = max(min_size_train), Wl = max_size rounded up (``training_padded_sizes``).
            Training without grouping: (Wl, Wl), one static square size. An explicit
            ``fixed_size``: that size. Evaluation: the batch's largest resized image rounded
            up to size_divisor

Each element is one dict (the model's ``inputs``), dense tensors only (RaggedTensors crash
``fit`` under a distribution strategy):

    images          (B, Hp, Wp, 3) float32  raw RGB 0..255, resized; zero in the padding
    image_sizes     (B, 2) int32     (height, width) of the resized image before padding
    gt_boxes        (B, M, 4) float32  xyxy in resized pixels; padding rows -1
    gt_classes      (B, M) int32     contiguous 1..K; padding -1 (valid = gt_classes > 0)
    gt_masks        (B, M, Hp, Wp) uint8  0/1; padding rows and pixels 0. With
                    ``gt_mask_size`` C (``input.gt_mask_format: cropped``): (B, M, C, C)
                    uint8 crops of the frames ``ops.masks.mask_crop_boxes(gt_boxes)``;
                    padding rows 0. The frame follows the box, so the resize leaves a crop
                    as it is and the flip mirrors it
    gt_keypoints    (B, M, Kp, 3) float32  [x, y, v] in resized pixels; padding rows -1
                    (only when the source has keypoints)
    gt_crowd_boxes  (B, C, 4) float32  xyxy in resized pixels of the crowd regions (COCO
                    ``iscrowd``), padded with -1 rows like gt_boxes (C like M); only with
                    ``with_crowd`` (YOLACT: anchors they cover become neutral). The other
                    gt_* never hold crowd regions
    image_ids       (B,) int64       the dataset's image ids
    original_sizes  (B, 2) int32     (height, width) of the original image
    scales          (B,) float32     nominal resize factor; boxes are scaled per axis by
                                     image_sizes / original_sizes (torchvision's resize_boxes)

Stages: image indices -> [training: filter images without GT, full shuffle of the indices,
repeat, a seed per index, with grouping the windows' order, skip] -> Python stage (``tf.numpy_function``, parallel): PIL decode + pycocotools masks;
an unreadable, truncated or wrongly sized image is skipped, counted in
``source.stats.skipped_images`` and named in a logged warning -> [training with
``augment_fn`` (``data.augment: ssd``): SSD augmentation, examples left without instances
dropped] -> TF stage (parallel): resize (training: random short side from ``min_size_train``;
``input.resize: fixed_square``: size x size), random horizontal flip, padding ->
batch (training: ``drop_remainder`` so B is static; with grouping, ``group_by_window`` on
the orientation, one batch per full window) -> prefetch. Training randomness is
stateless, seeded per element from ``tf.data.Dataset.random(seed)``: reproducible for a seed.
TFRecords (``tfrecord.TFRecordSource``) replace the first stages by records -> [training:
filter, shuffle shards and a buffer of records, repeat, seeds, windows, skip] -> the same
decoding in Python. Multi-worker input (``num_shards``): each pipeline takes its share of
the indices or records before the shuffle, so it decodes only its share.
"""
import functools

import numpy as np
import tensorflow as tf

from keras_maskrcnn import preprocessing
from keras_maskrcnn.data import augment, coco, stream, synthetic, tfrecord, transforms


def flip_indices_from_pairs(flip_pairs, num_keypoints):
    """Permutation of the keypoint axis for a horizontal flip: each pair (a, b) swapped."""
    perm = list(range(num_keypoints))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


def load_split(data_config, split, num_keypoints=0, create_synthetic=True):
    """Loads ``data_config.<split>`` ("train" or "val") as a ``coco.CocoDataset``.

    Format "coco" reads ``annotations`` / ``images``; "synthetic" reads the shapes dataset of
    ``data_config.synthetic`` (written first when absent or written with other parameters, if
    ``create_synthetic``); "tfrecord" opens ``tfrecords`` as a ``tfrecord.TFRecordSource``
    (categories from ``annotations`` when given, else from the records' labels).
    """
    split_config = getattr(data_config, split)
    if split_config.format == "synthetic":
        paths = synthetic.split_paths(data_config.synthetic.output_dir, split)
        if create_synthetic:
            synthetic.ensure_synthetic_dataset(data_config.synthetic)
        return coco.load_coco(*paths, num_keypoints=num_keypoints,
                              strict=data_config.strict)
    if split_config.format == "coco":
        return coco.load_coco(split_config.annotations, split_config.images, num_keypoints,
                              strict=data_config.strict)
    if split_config.format == "tfrecord":
        return tfrecord.load_tfrecords(split_config.tfrecords, split_config.annotations,
                                       num_keypoints)
    raise NotImplementedError(f"data.{split}.format {split_config.format!r} is not read by "
                              "keras_maskrcnn.data.pipeline")


def _python_stage(source, max_instances, with_masks, gt_mask_size=None, with_crowd=False,
                  max_pixels=None):
    """A tf.data map function running ``source.load_example`` in Python; adds ``valid``.
    ``max_pixels``: images over it are skipped before decoding (``input.max_image_pixels``)."""
    names, dtypes, shapes, empty = coco.example_schema(source.num_keypoints, with_masks,
                                                       gt_mask_size, with_crowd)

    def load(index):
        example = source.load_example(int(index), max_instances, with_masks, gt_mask_size,
                                      with_crowd, max_pixels)
        valid = example is not None
        if not valid and source.stats.num_skipped >= len(source):
            raise RuntimeError(f"{source.annotation_file}: no image of the split is readable "
                               f"(first: {source.stats.skipped_images[0]})")
        example = example if valid else empty
        values = [np.asarray(example[n], dtypes[n].as_numpy_dtype) for n in names]
        return values + [np.bool_(valid)]

    def stage(index):
        values = tf.numpy_function(load, [index], [dtypes[n] for n in names] + [tf.bool])
        example = {n: tf.ensure_shape(v, shapes[n]) for n, v in zip(names, values)}
        example["valid"] = tf.ensure_shape(values[-1], [])
        return example

    return stage


def training_padded_sizes(input_config):
    """The largest padded training sizes of aspect-ratio grouping, per orientation.

    Args:
        input_config: ``config.InputConfig``.

    Returns:
        ((Hs, Wl), (Wl, Hs)) Python ints: the landscape (h <= w) and portrait (h > w) padded
        (height, width), with Hs = max(min_size_train) and Wl = max_size each rounded up to
        size_divisor. Any training resize fits its orientation's size: the resize keeps the
        short side <= its sampled min size <= max(min_size_train) (for "range" sampling
        min_size_train is [lo, hi]) and the long side <= max_size.
    """
    d = input_config.size_divisor
    short = -(-max(input_config.min_size_train) // d) * d  # ceil to a multiple of d
    long = -(-input_config.max_size // d) * d
    return (short, long), (long, short)


def _orientation(example):
    """() int64 window key of a TF-stage output: 0 landscape (h <= w), 1 portrait (h > w)."""
    size = example["image_sizes"]
    return tf.cast(size[0] > size[1], tf.int64)


def _tf_stage(input_config, training, flip_probability, flip_indices, mask_method,
              fixed_size, gt_mask_size=None):
    """The TF map function: resize, flip, pad. ``fixed_size``: (Hp, Wp) ints, or None: each
    example is padded to its size rounded up to size_divisor, and the batching pads on to the
    batch's largest image. ``gt_mask_size``: masks are (M, C, C) crops (not resized, not padded
    spatially)."""
    max_instances = input_config.max_instances

    def stage(example, seed=None):
        example = dict(example)
        example.pop("valid")
        crops = example.pop("masks") if gt_mask_size and "masks" in example else None
        original_size = tf.shape(example["image"])[:2]
        min_size = input_config.min_size_test
        if training:
            size_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            min_size = transforms.sample_min_size(size_seed, input_config.min_size_train,
                                                  input_config.min_size_train_sampling)
        if input_config.resize == "fixed_square":
            example = transforms.resize_example_square(example, input_config.size, mask_method)
        else:
            example = transforms.resize_example(example, min_size, input_config.max_size,
                                                mask_method)
        if crops is not None:  # the crop frame follows the resized box: crops unchanged
            example["masks"] = crops
        if training and flip_probability > 0:
            example = transforms.random_flip_example(example, flip_seed, flip_probability,
                                                     flip_indices)
        size = tf.shape(example["image"])[:2]  # resized (and flipped: same size)
        # A fixed size batches with .batch: that size and max_instances rows. Otherwise
        # padded_batch pads the image and the rows to the batch's largest (max_instances
        # rows of gt_masks were mostly zeros for the few instances of a COCO image).
        if fixed_size is not None:
            pad_h, pad_w = fixed_size
            rows = functools.partial(transforms.pad_instances, max_instances=max_instances)
        else:
            pad_h, pad_w = preprocessing.padded_size(size[0], size[1],
                                                      input_config.size_divisor)
            rows = functools.partial(transforms.limit_instances, max_instances=max_instances)
        out = {
            "images": transforms.pad_image(example["image"], pad_h, pad_w),
            "image_sizes": size,
            "gt_boxes": rows(example["boxes"], pad_value=-1),
            "gt_classes": rows(example["classes"], pad_value=-1),
            "image_ids": example["image_id"],
            "original_sizes": original_size,
            "scales": example["scale"],
        }
        if crops is not None:
            out["gt_masks"] = rows(example["masks"], pad_value=0)
        elif "masks" in example:
            out["gt_masks"] = transforms.pad_masks(rows(example["masks"], pad_value=0),
                                                   pad_h, pad_w)
        if "keypoints" in example:
            out["gt_keypoints"] = rows(example["keypoints"], pad_value=-1)
        if "crowd_boxes" in example:
            out["gt_crowd_boxes"] = rows(example["crowd_boxes"], pad_value=-1)
        if fixed_size is not None:  # one static shape for the whole training run
            out["images"] = tf.ensure_shape(out["images"], [pad_h, pad_w, 3])
            if "gt_masks" in out:
                mask_hw = [gt_mask_size, gt_mask_size] if crops is not None else [pad_h, pad_w]
                out["gt_masks"] = tf.ensure_shape(out["gt_masks"], [max_instances] + mask_hw)
        return out

    return stage


def _padding_values(with_masks, with_keypoints, with_crowd=False):
    values = {"images": 0.0, "image_sizes": 0, "gt_boxes": -1.0, "gt_classes": -1,
              "image_ids": tf.constant(0, tf.int64), "original_sizes": 0, "scales": 0.0}
    if with_masks:
        values["gt_masks"] = tf.constant(0, tf.uint8)
    if with_keypoints:
        values["gt_keypoints"] = -1.0
    if with_crowd:
        values["gt_crowd_boxes"] = -1.0
    return {k: tf.constant(v, tf.float32) if isinstance(v, float) else
            tf.constant(v, tf.int32) if isinstance(v, int) else v for k, v in values.items()}


def _batch(dataset, batch_size, training, fixed_size, grouped, with_masks, with_keypoints,
           with_crowd=False):
    """Batches TF-stage outputs: one fixed size, orientation groups, or padded per batch."""
    if fixed_size is not None:
        return dataset.batch(batch_size, drop_remainder=training)
    values = _padding_values(with_masks, with_keypoints, with_crowd)
    if grouped:  # every window holds batch_size examples of one orientation = one batch
        return dataset.group_by_window(
            _orientation, lambda _, window: window.padded_batch(
                batch_size, drop_remainder=True, padding_values=values),
            window_size=batch_size)
    return dataset.padded_batch(batch_size, drop_remainder=training, padding_values=values)


def build_dataset(source, input_config, batch_size, training, *, flip_probability=0.5,
                  flip_pairs=None, shuffle_buffer=1000, num_parallel_calls=None, cache=False,
                  filter_empty_images=True, seed=0, max_images=None, mask_method="nearest",
                  with_masks=True, fixed_size=None, skip_examples=0,
                  group_by_aspect_ratio=False, augment_fn=None, gt_mask_size=None,
                  num_shards=1, shard_index=0, with_crowd=False):
    """Batched model inputs from a loaded dataset (keys and shapes in the module docstring).

    Args:
        source: ``coco.CocoDataset`` (``load_split`` / ``coco.load_coco``) or
            ``tfrecord.TFRecordSource`` (``tfrecord.load_tfrecords``; same output); its
            ``stats`` count the images skipped while iterating.
        input_config: ``config.InputConfig`` (sizes, size_divisor, max_instances).
        batch_size: B (global batch).
        training: True: filter images without GT (if ``filter_empty_images``), shuffle,
            random short side from ``min_size_train``, random flip, repeat forever, fixed
            padded size(s), ``drop_remainder``. False: ordered by image id, ``min_size_test``,
            no flip, one pass, padded to the batch's largest image, last batch may be smaller.
        flip_probability: training horizontal flip probability.
        flip_pairs: keypoint pairs swapped by a flip (``KeypointHeadConfig.flip_pairs``);
            required (may be empty) when the source has keypoints and flips are on.
        shuffle_buffer: > 0 shuffles; the shuffle is over image indices before decoding, so it
            is a full shuffle of the split whatever the number (with ``cache`` it is a buffer of
            this many decoded examples). 0 keeps the file order.
        num_parallel_calls: parallel map calls; None = tf.data.AUTOTUNE.
        cache: cache the decoded original-size examples in memory (small datasets only).
        seed: shuffle and augmentation seed (the dataset is reproducible for a seed).
        max_images: keep only the first images (by id) of the split.
        mask_method: see ``transforms.resize_masks``.
        with_masks: False drops ``gt_masks`` (box-only models; saves the mask decoding).
        gt_mask_size: None: full-image ``gt_masks``; C: (C, C) crops per instance (module
            docstring); not with ``augment_fn`` (its crop and expand edit boxes and masks
            apart, ValueError).
        fixed_size: (Hp, Wp) to pad every image to (overrides grouping); default (training)
            see ``group_by_aspect_ratio``, (evaluation) None = per batch.
        skip_examples: training: start after this many examples of the (deterministic for a
            seed) stream, e.g. steps already trained x global batch when resuming. Skipping
            happens on image indices (TFRecords: serialized records) and seeds, before any
            decoding. With grouping it skips whole batches (a multiple of batch_size), formed
            on the indices / records before the skip (a record's orientation from its
            image/height and image/width): the resumed stream is exactly the uninterrupted
            one's from that batch on (``stream.position_stream``). Sharded: a position in
            this pipeline's own stream (steps x its batches per step x batch_size).
        group_by_aspect_ratio: training without ``fixed_size``: True batches examples of one
            orientation together (``tf.data.Dataset.group_by_window``, deterministic for a
            seed; an example waits until batch_size examples of its orientation arrived) and
            pads each batch to its largest image (at most ``training_padded_sizes``); the
            element spec then has None for Hp, Wp, and ``fit`` traces one graph for all sizes.
            False (the default here; ``DataConfig.group_by_aspect_ratio`` defaults to True)
            pads to max_size rounded up to size_divisor on both sides, one static shape.
            ``input_config.resize == "fixed_square"``: every image is size x size, padded to
            size rounded up to size_divisor (training: that static size, no grouping).
        augment_fn: training only: ``fn(example, seed) -> example`` run on the decoded
            example before the resize (``augment.augment_fn_from_settings``: SSD / YOLACT
            augmentation); examples it leaves without instances are dropped. Its seed is split
            off each element's seed, so the other draws stay those of a run without it.
        num_shards, shard_index: one input pipeline of ``num_shards`` (multi-worker training:
            one per worker, ``tf.distribute.InputContext``) decodes only its share, disjoint
            from the others', the union the whole split, fixed across epochs: COCO sources
            the image indices ``shard_index::num_shards`` (index-level, before any image is
            read); TFRecords whole files, or every N-th record of each file when there are
            fewer files than shards (``TFRecordSource.record_dataset``). Each pipeline
            shuffles, groups and positions its own share; its dataset has tf.distribute's
            auto-sharding off (``AutoShardPolicy.OFF``).
        with_crowd: add ``gt_crowd_boxes`` (the crowd regions' boxes, transformed like
            gt_boxes; YOLACT). False (Mask R-CNN): crowd regions are not read at all.

    Returns:
        tf.data.Dataset of input dicts.
    """
    num_kp = source.num_keypoints
    if training and flip_probability > 0 and num_kp and flip_pairs is None:
        raise ValueError("the source has keypoints: pass flip_pairs (possibly empty) so a "
                         "horizontal flip can swap left and right keypoints")
    flip_indices = flip_indices_from_pairs(flip_pairs or (), num_kp) if num_kp else None
    if gt_mask_size is not None and augment_fn is not None:
        raise ValueError("cropped GT masks (gt_mask_size) cannot go through augment_fn: the "
                         "ssd crop clips boxes without their mask crops")
    square = input_config.resize == "fixed_square"
    if training and fixed_size is None and square:
        side = -(-input_config.size // input_config.size_divisor) * input_config.size_divisor
        fixed_size = (side, side)
    grouped = training and fixed_size is None and group_by_aspect_ratio
    if training and fixed_size is None and not grouped:
        side = training_padded_sizes(input_config)[0][1]  # max_size rounded up
        fixed_size = (side, side)
    parallel = num_parallel_calls or tf.data.AUTOTUNE
    examples = _record_examples if isinstance(source, tfrecord.TFRecordSource) \
        else _index_examples
    dataset = examples(source, input_config.max_instances, training, with_masks=with_masks,
                       shuffle_buffer=shuffle_buffer,
                       filter_empty_images=filter_empty_images, max_images=max_images,
                       cache=cache, num_parallel_calls=parallel, gt_mask_size=gt_mask_size,
                       with_crowd=with_crowd, max_pixels=input_config.max_image_pixels,
                       position=stream.Position(seed, skip_examples,
                                                batch_size if grouped else 0, num_shards,
                                                shard_index))
    if training and augment_fn is not None:
        dataset = dataset.map(functools.partial(_augment, augment_fn),
                              num_parallel_calls=parallel).filter(_has_instances)
    transform = _tf_stage(input_config, training, flip_probability, flip_indices, mask_method,
                          fixed_size, gt_mask_size)
    dataset = dataset.map(transform, num_parallel_calls=parallel)  # ordered (deterministic)
    dataset = _batch(dataset, batch_size, training, fixed_size, grouped, with_masks, num_kp > 0,
                     with_crowd)
    if num_shards > 1:  # sharded above, before decoding: tf.distribute must not shard again
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.OFF
        dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _index_examples(source, max_instances, training, *, with_masks, shuffle_buffer,
                    filter_empty_images, max_images, cache, num_parallel_calls, position,
                    gt_mask_size=None, with_crowd=False, max_pixels=None):
    """Decoded examples of a ``CocoDataset``; training: (example, seed) pairs, shuffled,
    repeated and positioned by ``stream.position_stream``. Sharded (index-level) before any
    image is read: pipeline k of N keeps the image indices k, k + N, ... of the split."""
    indices = np.arange(len(source), dtype=np.int64)
    if training and filter_empty_images:
        indices = indices[source.num_instances() > 0]
    indices = indices[:max_images]
    num_shards, shard_index = position.num_shards, position.shard_index
    indices = indices[shard_index::num_shards]
    if len(indices) == 0:
        raise ValueError(f"{source.annotation_file}: no images to read"
                         + (" (all without annotations)" if training else "")
                         + (f" in share {shard_index} of {num_shards}" if num_shards > 1 else ""))
    dataset = tf.data.Dataset.from_tensor_slices(indices)
    if training and shuffle_buffer > 0 and not cache:  # indices are cheap: shuffle them all
        dataset = dataset.shuffle(len(indices), seed=position.seed,
                                  reshuffle_each_iteration=True)
    load = _python_stage(source, max_instances, with_masks, gt_mask_size, with_crowd,
                         max_pixels)
    return stream.decoded_examples(dataset, load, _index_orientation(source), training,
                                   cache, shuffle_buffer, position, num_parallel_calls)


def _record_examples(source, max_instances, training, *, with_masks, shuffle_buffer,
                     filter_empty_images, max_images, cache, num_parallel_calls, position,
                     gt_mask_size=None, with_crowd=False, max_pixels=None):
    """``_index_examples`` of a ``TFRecordSource``: its share of serialized records
    (``record_dataset``: file- or record-level sharding), positioned before decoding with
    the orientation from the records' image size (``tfrecord.record_orientation``)."""
    records = source.record_dataset(
        training, shuffle_buffer=0 if cache else shuffle_buffer, seed=position.seed,
        filter_empty_images=filter_empty_images, max_images=max_images,
        num_parallel_calls=num_parallel_calls, num_shards=position.num_shards,
        shard_index=position.shard_index)
    load = source.decode_stage(max_instances, with_masks, gt_mask_size, with_crowd, max_pixels)
    return stream.decoded_examples(records, load, tfrecord.record_orientation, training,
                                   cache, shuffle_buffer, position, num_parallel_calls)


def _index_orientation(source):
    """Window key of an image index from the annotations: 0 landscape (h <= w), 1 portrait."""
    portrait = tf.constant([record.height > record.width for record in source.images])
    return lambda index: tf.cast(tf.gather(portrait, index), tf.int64)


def _augment(augment_fn, example, seed):
    """(example, seed) -> (augmented example, the seed left for the TF stage)."""
    augment_seed, rest = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    return augment_fn(example, augment_seed), rest


def _has_instances(example, seed):
    return augment.num_instances(example) > 0


def dataset_from_config(data_config, input_config, split, batch_size, training,
                        keypoint_config=None, seed=0, max_images=None, with_masks=True,
                        skip_examples=0, num_shards=1, shard_index=0, with_crowd=False):
    """``load_split`` + ``build_dataset`` with the config objects.

    Args:
        data_config: ``config.DataConfig``; input_config: ``config.InputConfig``.
        split: "train" or "val".
        batch_size, skip_examples, num_shards, shard_index: as ``build_dataset``.
        keypoint_config: ``config.KeypointHeadConfig``; keypoints are read when it is enabled.
        with_crowd: see ``build_dataset`` (``run.train_dataset``: YOLACT).

    Returns:
        (tf.data.Dataset, source): the dataset and its ``coco.CocoDataset`` or
        ``tfrecord.TFRecordSource`` (categories, stats).
    """
    kp_on = keypoint_config is not None and keypoint_config.enabled
    source = load_split(data_config, split, keypoint_config.num_keypoints if kp_on else 0)
    augment_fn, flip_probability = None, data_config.flip_probability
    if training and data_config.augment == "ssd":
        flip_indices = keypoint_config.flip_indices if kp_on else None
        augment_fn = augment.augment_fn_from_settings(flip_indices=flip_indices)
        if augment.DEFAULT_SETTINGS["mirror"]:
            flip_probability = 0.0  # the augmentation mirrors already
    dataset = build_dataset(
        source, input_config, batch_size, training,
        flip_probability=flip_probability, augment_fn=augment_fn,
        flip_pairs=keypoint_config.flip_pairs if kp_on else None,
        shuffle_buffer=data_config.shuffle_buffer,
        num_parallel_calls=data_config.num_parallel_calls, cache=data_config.cache,
        filter_empty_images=data_config.filter_empty_images, seed=seed,
        max_images=max_images, with_masks=with_masks, skip_examples=skip_examples,
        group_by_aspect_ratio=data_config.group_by_aspect_ratio,
        gt_mask_size=input_config.gt_mask_size
        if input_config.gt_mask_format == "cropped" else None, num_shards=num_shards,
        shard_index=shard_index, with_crowd=with_crowd)
    return dataset, source
