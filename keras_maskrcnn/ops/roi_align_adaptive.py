"""RoIAlign with adaptive sampling (Mask R-CNN paper section 3, "RoIAlign"; detectron2's
ROIAlignV2), on one feature map and on flattened RoIs with per-RoI map indices.

Conventions pinned here (tests/ops/test_roi_align_adaptive.py checks each against torchvision):
    * Features are NHWC; boxes are ``xyxy`` float32 pixels of the (padded) input image, mapped
      to feature coordinates by ``spatial_scale`` (1 / stride), computed in float32.
    * ``roi_align_adaptive`` equals ``torchvision.ops.roi_align(..., sampling_ratio=0)`` (and
      so detectron2's ``ROIAlignV2`` when ``aligned=True``): roi_start = x1 * scale - offset
      (offset 0.5 if ``aligned``), roi_w = (x2 * scale - offset) - roi_start, clamped to >= 1
      only when not aligned; bin = roi_w / Q; G_x = ceil(roi_w / Q) samples per bin along x
      (likewise G_y along y, per RoI), at roi_start + q * bin + (i + 0.5) * bin / G_x, averaged
      over the G_y * G_x samples of the bin. Empty or inverted RoIs (G <= 0) pool to 0.
    * torchvision's border rule: a sample with y < -1 or y > H (same for x) is 0; otherwise y is
      clamped to [0, H - 1] and interpolated bilinearly.
    * Gradients flow to the features (the exact adjoint, as torchvision's backward kernel), not
      to the boxes. Everything runs in float32; the result is cast back to the features' dtype.
    * The FPN version is ``ops.roi_align.multilevel_roi_align(sampling_ratio=0)``, which pools
      each level with ``roi_align_adaptive_indexed``; with ``level_mapping="detectron2"`` and
      ``aligned=True`` it is detectron2's ``ROIPooler`` (ROIAlignV2).

Implementation: the mean of bilinear samples on a regular grid is separable. Bin (p, q) of an
RoI equals sum_{h, w} Wy[p, h] F[h, w] Wx[q, w], where Wy[p, h] is the mean over the bin's
G_y row samples of the bilinear (hat) weight of row h, and likewise Wx. A hat weight spans two
rows and the samples of a bin are at least 0.5 apart when G >= 2, so each weight is a sum of
at most four samples: Wy is built in closed form from a few candidate samples per row, for
any G (exact for RoIs of any size; no sampling cap). Only the window of rows and columns an
RoI touches is read: each RoI gets the smallest (Lh, Lw) window from a ladder of sides (then
the whole map) per axis, RoIs are sorted by window, and one while loop runs over chunks of
RoIs sharing a window: gather the windows, contract them with two batched matmuls. The
backward pass is the transposed contraction, its window gradients scatter-added in groups.
Shapes inside are dynamic (graph mode; not for XLA); the output's are static.

Shape shorthand:
    B  batch size            R  RoIs per image        K  flattened RoIs (B * R, or a subset)
    H, W  feature map height and width;  C  channels
    P, Q  output height and width (``output_size``)
    Lh, Lw  window rows and columns (covering the rows / columns an RoI's samples touch)
    k  RoIs of one chunk (all with the same window)
"""
import tensorflow as tf

from keras_maskrcnn.ops.roi_bins import output_pair, roi_extent

# Window sides (feature pixels) below the whole map, per axis: a 1.5x ladder keeps the gathered
# window within 2.25x of the area an RoI touches.
_LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Floats gathered per chunk of windows: small enough to stay in cache between the gather and
# the matmul that reads it (also bounds the temporaries of the forward and backward pass).
_CHUNK_FLOATS = 1 << 20
# Candidate samples per (bin, row): a hat weight covers 2 feature pixels and samples of a bin
# are > 0.5 apart (G >= 2) or alone (G = 1), so 4 can reach a row; one more on each side
# absorbs float rounding of the candidate search.
_CANDIDATES = 6


def _axis_grid(start, end, num_bins, aligned):
    """torchvision's sampling along one axis: (K,) box edges in feature pixels -> (K,) float32
    roi_start, bin_size and grid = ceil(roi_size / P) samples per bin (<= 0: no samples)."""
    roi_start, roi_size = roi_extent(start, end, aligned)
    bin_size = roi_size / num_bins
    grid = tf.math.ceil(roi_size / num_bins)
    return roi_start, bin_size, grid


def _sample(origin, index, bin_size, grid):
    """Sample ``index`` of the bin starting at ``origin``, in torchvision's operation order."""
    return origin + (index + 0.5) * bin_size / grid


def _axis_span(roi_start, bin_size, grid, num_bins, size):
    """First row and number of rows an RoI's samples touch, (K,) int32 each (>= 1 row)."""
    safe = tf.maximum(grid, 1.0)
    top = size - 1.0
    first = _sample(roi_start, 0.0, bin_size, safe)  # bin 0, sample 0
    last = _sample(roi_start + (num_bins - 1) * bin_size, safe - 1.0, bin_size, safe)
    low = tf.floor(tf.clip_by_value(first, 0.0, top))
    high = tf.minimum(tf.floor(tf.clip_by_value(last, 0.0, top)) + 1.0, top)
    rows = tf.where(grid > 0.0, high - low + 1.0, 1.0)
    return tf.cast(low, tf.int32), tf.cast(rows, tf.int32)


def _axis_weights(roi_start, bin_size, grid, size, win_start, win_len, num_bins):
    """Wy: bin p's mean over its samples of the bilinear weight of row win_start + l.

    Args:
        roi_start, bin_size, grid: (K,) from ``_axis_grid``.  size: H (float32 scalar).
        win_start: (K,) int32 first row of each window.  win_len: Lh (int or int32 scalar).
        num_bins: P.

    Returns:
        (K, P, Lh) float32 weights (1 / G included; 0 where no sample reaches the row).
    """
    safe = tf.maximum(grid, 1.0)[:, None, None, None]  # (K, 1, 1, 1)
    count = grid[:, None, None, None]
    bins = bin_size[:, None, None, None]
    step = tf.where(count > 0.0, bins / safe, 1.0)  # sample spacing, to find the candidates
    rows = tf.cast(win_start[:, None] + tf.range(win_len)[None, :], tf.float32)
    rows = rows[:, None, :, None]  # (K, 1, Lh, 1)
    origin = roi_start[:, None] + tf.range(num_bins, dtype=tf.float32) * bin_size[:, None]
    origin = origin[:, :, None, None]  # (K, P, 1, 1) start of each bin
    lowest = tf.where(rows > 0.0, rows - 1.0, -1.0)  # (K, 1, Lh, 1) samples reaching row r
    # are in [r - 1, r + 1] (row 0 also gets [-1, 0], row H - 1 gets [H - 1, H]: the clamps)
    first = tf.math.ceil((lowest - origin) / step - 0.5) - 1.0  # (K, P, Lh, 1) one below the
    first = tf.maximum(first, -1.0)  # first sample >= lowest; samples start at index 0
    index = first + tf.range(_CANDIDATES, dtype=tf.float32)  # (K, P, Lh, J) candidates
    y = _sample(origin, index, bins, safe)  # (K, P, Lh, J) candidate sample coordinates
    used = (index >= 0.0) & (index < count) & (y >= -1.0) & (y <= size)
    hat = tf.maximum(1.0 - tf.abs(tf.clip_by_value(y, 0.0, size - 1.0) - rows), 0.0)
    return tf.reduce_sum(tf.where(used, hat, 0.0), axis=-1) / safe[..., 0]


def _window_cells(origin, win_h, win_w, height, width):
    """(k, Lh, Lw) int32 index into the (B * H * W, C) pixel table of each window cell.

    Args:
        origin: (k, 3) int32 (batch index, first row, first column) of each window.
    """
    image, top, left = tf.unstack(origin, axis=1)  # 3 x (k,)
    rows = (image * height + top)[:, None] + tf.range(win_h)[None, :]  # (k, Lh) global rows
    cols = left[:, None] + tf.range(win_w)[None, :]  # (k, Lw)
    return (rows * width)[:, :, None] + cols[:, None, :]


def _roi_table(boxes, batch_idx, spatial_scale, out_hw, aligned, sizes):
    """Per-RoI sampling parameters sorted by window: dict of (K,) tensors "y" and "x" (tuples
    roi_start, bin_size, grid, first row / column), "image", "bucket" (window index), "order"
    (original position of each); and "windows" (n, 2) int32 (Lh, Lw) of the n windows."""
    scaled = tf.stop_gradient(boxes) * spatial_scale
    x1, y1, x2, y2 = tf.unstack(scaled, axis=1)  # 4 x (K,)
    ladder = [s for s in _LADDER if not all(isinstance(v, int) for v in sizes) or s < max(sizes)]
    table, steps, sides = {}, [], []
    for name, start, end, bins, size in (("y", y1, y2, out_hw[0], sizes[0]),
                                         ("x", x1, x2, out_hw[1], sizes[1])):
        roi_start, bin_size, grid = _axis_grid(start, end, bins, aligned)
        low, span = _axis_span(roi_start, bin_size, grid, bins, tf.cast(size, tf.float32))
        table[name] = (roi_start, bin_size, grid, low)
        sides.append(tf.minimum(tf.constant(ladder + [0], tf.int32), size) + tf.one_hot(
            len(ladder), len(ladder) + 1, on_value=size, off_value=0))  # ladder, then H
        steps.append(tf.reduce_sum(tf.cast(span[:, None] > sides[-1][None, :-1], tf.int32), 1))
    num = len(ladder) + 1  # window sides per axis
    bucket = steps[0] * num + steps[1]  # (K,) (row step, column step) of the smallest window
    order = tf.argsort(bucket, stable=True)  # (K,) RoIs grouped by bucket
    table = {name: tuple(tf.gather(t, order) for t in params) for name, params in table.items()}
    table.update(image=tf.gather(batch_idx, order), bucket=tf.gather(bucket, order), order=order,
                 windows=tf.reshape(tf.stack(tf.meshgrid(sides[0], sides[1], indexing="ij"),
                                             -1), [num * num, 2]))
    return table


def _chunk_table(table, channels, chunk_floats):
    """(lo, hi, bucket) of each chunk, (M,) int32 each: RoIs [lo, hi) of the sorted table, one
    bucket per chunk, at most ``chunk_floats`` window floats (at least one RoI) per chunk."""
    windows = table["windows"]  # (n, 2)
    num = tf.shape(windows)[0]
    counts = tf.math.bincount(table["bucket"], minlength=num, maxlength=num, dtype=tf.int32)
    starts = tf.cumsum(counts, exclusive=True)  # (n,) first sorted RoI of each bucket
    per = tf.maximum(chunk_floats // (windows[:, 0] * windows[:, 1] * channels), 1)  # (n,)
    chunks = (counts + per - 1) // per  # (n,) chunks per bucket, 0 when empty
    owner = tf.repeat(tf.range(num), chunks)  # (M,) bucket of each chunk
    rank = tf.range(tf.shape(owner)[0]) - tf.gather(tf.cumsum(chunks, exclusive=True), owner)
    lo = tf.gather(starts, owner) + rank * tf.gather(per, owner)
    hi = tf.minimum(lo + tf.gather(per, owner), tf.gather(starts + counts, owner))
    return lo, hi, owner


def _chunk_weights(table, lo, hi, window, sizes, out_hw):
    """Wy (k, P, Lh), Wx (k, Q, Lw) and window cells (k, Lh, Lw) of sorted RoIs [lo, hi)."""
    weights, starts = [], []
    for name, win, size, bins in zip("yx", window, sizes, out_hw):
        roi_start, bin_size, grid, low = (t[lo:hi] for t in table[name])
        start = tf.clip_by_value(low, 0, size - win)  # (k,) window holds the RoI's rows
        weights.append(_axis_weights(roi_start, bin_size, grid, tf.cast(size, tf.float32),
                                     start, win, bins))
        starts.append(start)
    origin = tf.stack([table["image"][lo:hi]] + starts, axis=1)  # (k, 3)
    return weights[0], weights[1], _window_cells(origin, window[0], window[1], *sizes)


def _loop_chunks(chunks, body, initial):
    """value = body(lo, hi, bucket, value) for each chunk, in order, one at a time."""
    lo, hi, owner = chunks

    def step(i, value):
        return i + 1, body(lo[i], hi[i], owner[i], value)

    return tf.while_loop(lambda i, _: i < tf.shape(lo)[0], step, (tf.constant(0), initial),
                         parallel_iterations=1)[1]


def _forward_chunk(pixels, table, lo, hi, bucket, sizes, out_hw):
    """(k, P, Q, C) pooled sorted RoIs [lo, hi) (one bucket) from the (B * H * W, C) pixels."""
    wy, wx, cells = _chunk_weights(table, lo, hi, tf.unstack(table["windows"][bucket]),
                                   sizes, out_hw)
    patch = tf.gather(pixels, cells)  # (k, Lh, Lw, C) the windows
    k, win_h, win_w = tf.unstack(tf.shape(cells))
    rows = tf.linalg.matmul(wy, tf.reshape(patch, [k, win_h, -1]))  # (k, P, Lw * C)
    rows = tf.reshape(rows, [k, out_hw[0], win_w, tf.shape(pixels)[1]])  # (k, P, Lw, C)
    return tf.linalg.matmul(wx[:, None], rows)  # (k, P, Q, C), Wx per RoI


def _backward_chunk(upstream, table, lo, hi, bucket, sizes, out_hw):
    """Adjoint of ``_forward_chunk``: window cells (n,) and their gradients (n, C)."""
    wy, wx, cells = _chunk_weights(table, lo, hi, tf.unstack(table["windows"][bucket]),
                                   sizes, out_hw)
    rows = tf.linalg.matmul(wx[:, None], upstream[lo:hi], transpose_a=True)  # (k, P, Lw, C)
    k = tf.shape(cells)[0]
    patch = tf.linalg.matmul(wy, tf.reshape(rows, [k, out_hw[0], -1]),
                             transpose_a=True)  # (k, Lh, Lw * C)
    return tf.reshape(cells, [-1]), tf.reshape(patch, [-1, tf.shape(upstream)[3]])


def _group_edges(chunks, windows, channels, budget):
    """(G + 1,) int32 chunk indices splitting the chunks into G consecutive groups of about
    ``budget`` window floats each (G = 0 without chunks)."""
    lo, hi, owner = chunks
    sides = tf.cast(tf.gather(windows, owner), tf.int64)  # (M, 2)
    volume = tf.cast(hi - lo, tf.int64) * sides[:, 0] * sides[:, 1] * tf.cast(channels, tf.int64)
    group = tf.cumsum(volume, exclusive=True) // tf.cast(budget, tf.int64)  # (M,) ascending
    change = tf.cast(tf.where(group[1:] != group[:-1])[:, 0], tf.int32) + 1
    count = tf.shape(lo)[0]
    edges = tf.concat([[0], change, [count]], 0)
    return edges[:tf.where(count > 0, tf.shape(edges)[0], 1)]


def _gradient(upstream, pixels, table, sizes, out_hw):
    """(B * H * W, C) gradient of the pixels from the (K, P, Q, C) sorted upstream gradient.

    Each scatter-add copies the pixel table, so the window gradients of consecutive chunks
    are collected up to the table's size and scattered together.
    """
    channels = tf.shape(pixels)[1]
    chunks = _chunk_table(table, channels, _CHUNK_FLOATS)
    edges = _group_edges(chunks, table["windows"], channels,
                         tf.maximum(_CHUNK_FLOATS, tf.size(pixels)))

    def collect(lo, hi, bucket, arrays):
        cells, rows = _backward_chunk(upstream, table, lo, hi, bucket, sizes, out_hw)
        return arrays[0].write(arrays[0].size(), cells), arrays[1].write(arrays[1].size(), rows)

    def group(g, total):
        arrays = (tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False),
                  tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False))
        part = tuple(t[edges[g]:edges[g + 1]] for t in chunks)
        cells, rows = _loop_chunks(part, collect, arrays)
        return g + 1, tf.tensor_scatter_nd_add(total, cells.concat()[:, None], rows.concat())

    return tf.while_loop(lambda g, _: g < tf.shape(edges)[0] - 1, group,
                         (tf.constant(0), tf.zeros_like(pixels)), parallel_iterations=1)[1]


def _pool_sorted(features, table, sizes, out_hw):
    """(K, P, Q, C) pooled RoIs in the table's order, with the adjoint as gradient."""
    count = tf.shape(table["bucket"])[0]

    @tf.custom_gradient
    def pool(feats):
        shape = tf.shape(feats)
        pixels = tf.reshape(feats, [-1, shape[3]])  # (B * H * W, C) one row per pixel
        lo, hi, owner = _chunk_table(table, shape[3], _CHUNK_FLOATS)
        chunks = (tf.concat([lo, [count]], 0), tf.concat([hi, [count]], 0),
                  tf.concat([owner, [0]], 0))  # an empty last chunk: never zero pieces

        def forward(lo, hi, bucket, pieces):
            return pieces.write(pieces.size(), _forward_chunk(pixels, table, lo, hi, bucket,
                                                              sizes, out_hw))

        pieces = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        pooled = _loop_chunks(chunks, forward, pieces).concat()  # (K, P, Q, C)

        def grad(upstream):
            upstream = tf.convert_to_tensor(upstream)  # IndexedSlices from the final gather
            return tf.reshape(_gradient(upstream, pixels, table, sizes, out_hw), shape)

        return pooled, grad

    return pool(features)


def _pool_flat(features, boxes, batch_idx, spatial_scale, out_hw, aligned):
    """(K, P, Q, C) adaptive RoIAlign of (K, 4) boxes in input pixels, each on the image
    ``batch_idx`` (K,) names of the (B, H, W, C) float32 map."""
    shape = tf.shape(features)  # (H, W): Python ints where static, else int32 scalars
    sizes = tuple(features.shape[i] if features.shape[i] is not None else shape[i]
                  for i in (1, 2))
    table = _roi_table(boxes, batch_idx, spatial_scale, out_hw, aligned, sizes)
    pooled = _pool_sorted(features, table, sizes, out_hw)  # (K, P, Q, C) in bucket order
    pooled = tf.gather(pooled, tf.math.invert_permutation(table["order"]))  # RoI order
    return tf.ensure_shape(pooled, [None, out_hw[0], out_hw[1], features.shape[-1]])


def roi_align_adaptive(features, boxes, output_size, spatial_scale=1.0, aligned=True):
    """RoIAlign with ceil(roi_size / output_size) samples per bin and axis, per RoI.

    Args:
        features: (B, H, W, C) float feature map (any float dtype; computed in float32).
        boxes: (B, R, 4) xyxy boxes in input pixels; R may be 0 or unknown. No gradient flows
            into them.
        output_size: int or (P, Q).
        spatial_scale: input pixels -> feature pixels (1 / stride).
        aligned: True shifts boxes by -0.5 feature pixel (detectron2's ROIAlignV2); False is
            torchvision's legacy mode (also clamps RoI sides to >= 1 feature pixel).

    Returns:
        (B, R, P, Q, C) pooled features in the features' dtype.

    Convention: equals ``torchvision.ops.roi_align(nchw, [batch_idx, x1, y1, x2, y2],
    output_size, spatial_scale, sampling_ratio=0, aligned)`` transposed to NHWC, for RoIs of
    any size (see the module docstring).
    """
    out_hw = output_pair(output_size)
    features = tf.convert_to_tensor(features)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    flat, batch_idx = _flatten_rois(boxes)
    pooled = _pool_flat(tf.cast(features, tf.float32), flat, batch_idx, float(spatial_scale),
                        out_hw, aligned)  # (B * R, P, Q, C)
    return _unflatten(pooled, boxes, features)


def _flatten_rois(boxes):
    """(B, R, 4) boxes -> (B * R, 4) boxes and (B * R,) int32 batch index of each."""
    shape = tf.shape(boxes)
    flat = tf.reshape(boxes, [-1, 4])  # (B * R, 4), image-major
    return flat, tf.repeat(tf.range(shape[0], dtype=tf.int32), shape[1])


def _unflatten(pooled, boxes, features):
    """(B * R, P, Q, C) float32 -> (B, R, P, Q, C) in the features' dtype, static dims kept."""
    out = tf.reshape(pooled, tf.concat([tf.shape(boxes)[:2], tf.shape(pooled)[1:]], 0))
    out.set_shape(boxes.shape[:2].concatenate(pooled.shape[1:3] + features.shape[-1:]))
    return tf.cast(out, features.dtype)


def roi_align_adaptive_indexed(images, boxes, box_indices, output_size, spatial_scale=1.0,
                               aligned=True):
    """Adaptive RoIAlign of flattened RoIs, each on the map ``box_indices`` names.

    Args:
        images: (N, H, W, C) maps of any real dtype (read as float32).
        boxes: (K, 4) xyxy boxes in input pixels.  box_indices: (K,) int32 index into N.
        output_size, spatial_scale, aligned: as in ``roi_align_adaptive``.

    Returns:
        (K, P, Q, C) float32: ``roi_align_adaptive``'s sampling (``ops.roi_align``'s
        ``multilevel_roi_align`` and ``roi_align_indexed`` use it for ``sampling_ratio=0``).
    """
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    return _pool_flat(images, tf.cast(tf.convert_to_tensor(boxes), tf.float32),
                      tf.cast(box_indices, tf.int32), float(spatial_scale),
                      output_pair(output_size), aligned)
