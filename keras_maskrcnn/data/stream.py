"""The order of a training stream: per-example seeds, aspect-ratio windows, resume position.

Mask R-CNN section 3.1 trains on images of one orientation per batch (torchvision's
GroupedBatchSampler, detectron2's AspectRatioGroupedDataset: ``pipeline``'s
``group_by_aspect_ratio``). This module puts the stream of image indices or serialized
records, before anything is decoded, in the order in which those batches will form, so a
run resumed after k steps skips exactly the examples of k batches and gets exactly the
batches the uninterrupted run saw from step k on.

Conventions pinned here (tests/data/test_data_pipeline.py, test_data_tfrecord.py and
tests/integration/test_train.py check them):
    * Every element gets its (2,) int64 stateless seed from ``tf.data.Dataset.random(seed)``
      before anything can drop or reorder it; input pipeline k of N (multi-worker) takes
      every N-th seed from the k-th.
    * Window key: 0 landscape (h <= w, square included), 1 portrait (h > w), of the original
      image; a resize keeps it (floor(side * scale) is monotonic).
    * A position is a number of examples of this pipeline's own stream: steps x batches per
      step x B; with grouping, whole batches.

Shape shorthand:
    B  examples per batch of this pipeline (``group_size``)
"""
import collections

import tensorflow as tf

#: A training stream's seed, start and share: the arguments of ``position_stream``.
Position = collections.namedtuple(
    "Position", ("seed", "skip_examples", "group_size", "num_shards", "shard_index"))


def decoded_examples(elements, load, orientation, training, cache, shuffle_buffer, position,
                     num_parallel_calls):
    """Elements (image indices or serialized records, shuffled unless ``cache``) -> decoded
    valid examples (``load(element)``: a dict with a () bool "valid").

    Training: (example, seed) pairs positioned by ``position_stream`` (a ``Position``) on the
    elements, with ``orientation(element)``, before decoding; or, with ``cache``, on the cached
    decoded examples (shuffled in a buffer of ``shuffle_buffer``). Evaluation: one pass.
    """
    if cache:
        dataset = elements.map(load, num_parallel_calls=num_parallel_calls).filter(is_valid)
        dataset = dataset.cache()
        if training and shuffle_buffer > 0:
            dataset = dataset.shuffle(shuffle_buffer, seed=position.seed,
                                      reshuffle_each_iteration=True)
        if training:
            dataset = position_stream(dataset.repeat(), decoded_orientation, *position)
        return dataset
    if not training:
        return elements.map(load, num_parallel_calls=num_parallel_calls).filter(is_valid)
    dataset = position_stream(elements.repeat(), orientation, *position)
    return dataset.map(lambda element, seed: (load(element), seed),
                       num_parallel_calls=num_parallel_calls).filter(lambda e, _: e["valid"])


def position_stream(dataset, orientation, seed, skip_examples, group_size, num_shards=1,
                    shard_index=0):
    """(element, (2,) stateless seed) pairs of a training stream, from ``skip_examples`` on.

    With grouping (``group_size`` B > 0) the stream is first put in the order in which
    ``pipeline``'s ``group_by_window`` will batch it: windows of B elements of one orientation
    (``orientation(element)``), each complete window in the order it fills. The skip is then
    whole windows = whole batches, and a resumed run (``skip_examples`` = steps x B) gets
    exactly the batches the uninterrupted run saw from that step on: no example waits in a
    window across the resume point. (An image skipped as unreadable, or an example an
    augmentation drops, shifts its window's neighbours to the next one of that orientation;
    the batching still groups them correctly, but around it a resume is not exact.)
    """
    seeds = tf.data.Dataset.random(seed=seed).batch(2).shard(num_shards, shard_index)
    dataset = tf.data.Dataset.zip((dataset, seeds))
    if not group_size:
        return dataset.skip(skip_examples)
    if skip_examples % group_size:
        raise ValueError(f"skip_examples ({skip_examples}) must be whole batches of "
                         f"{group_size} when grouping by aspect ratio")
    dataset = dataset.group_by_window(lambda element, _: orientation(element),
                                      lambda _, window: window, window_size=group_size)
    return dataset.skip(skip_examples)


def decoded_orientation(example):
    """Window key of a decoded original-size example: 0 landscape (h <= w), 1 portrait."""
    size = tf.shape(example["image"])
    return tf.cast(size[0] > size[1], tf.int64)


def is_valid(example):
    return example["valid"]
