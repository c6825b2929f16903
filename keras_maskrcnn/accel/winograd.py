"""3x3 stride-1 "same" convolution by Winograd's minimal filtering F(2x2, 3x3).

Not a step of the method: a CPU kernel (``keras_maskrcnn.accel``) that ``accelerate`` turns on
for the mask and keypoint heads' 3x3 convs on 14x14 RoI features (no gain on the backbone's
large maps; bench/README.md).

Shape shorthand:
    B  batch size (RoIs in a head);  H, W  feature map height and width
    C  input channels;  O  output channels;  T  number of 2x2 output tiles, B * H/2 * W/2

Why: the keypoint head is eight 3x3 512-channel convolutions on 14x14 RoI features, most of a
Keypoint R-CNN inference; the mask head is four 256-channel ones. A direct
3x3 conv costs 9 multiply-adds per output and input channel; F(2x2, 3x3) (Lavin & Gray, 2016)
computes each 2x2 output tile from a 4x4 input tile with 16, 2.25x fewer:

    Y = A^T [ (G g G^T) * (B^T d B) ] A        per tile and channel pair, * elementwise

with d the 4x4 input tile (stride 2, overlapping by 2), g the 3x3 kernel and

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].

Summed over input channels the elementwise products become 16 independent (T, C) @ (C, O)
matmuls, one per tile position (p, q), which is where the time goes. The input and output
transforms are additions of whole slices (no gather): the padded input is rearranged by
``space_to_depth`` so that the four rows (columns) of every tile are two neighbouring blocks'
two sub-rows (sub-columns), contiguous channel slices. Outputs equal ``tf.nn.conv2d`` to
float32 rounding (tests/accel/test_accel_winograd.py); the gradient is that of the convolution
itself (``accel.conv.conv2d_same``'s matmul-based one), so training sees an exact conv gradient.
"""
import numpy as np
import tensorflow as tf

from keras_maskrcnn.accel import conv as conv_ops

# G: (4, 3), the kernel transform; the 16 transformed taps are G g G^T.
_KERNEL_TRANSFORM = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5],
                              [0.0, 0.0, 1.0]], np.float32)


def conv2d_winograd_3x3(x, kernel):
    """``tf.nn.conv2d(x, kernel, 1, "SAME")`` for a 3x3 kernel, computed with F(2x2, 3x3).

    Args:
        x: (B, H, W, C) float NHWC (B, H, W may be dynamic; odd H or W are padded and cropped).
        kernel: (3, 3, C, O) float.

    Returns:
        (B, H, W, O) in x's dtype; its gradient is the convolution's (``accel.conv``).
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, x.dtype)
    if tuple(kernel.shape[:2]) != (3, 3):
        raise ValueError(f"conv2d_winograd_3x3 needs a 3x3 kernel, got shape {kernel.shape}")
    return _conv2d_winograd(x, kernel)


@tf.custom_gradient
def _conv2d_winograd(x, kernel):
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    tiles = _input_transform(x)  # 16 x (B, H'/2, W'/2, C)
    weights = transform_kernel(kernel)  # (16, C, O)
    channels, filters = kernel.shape[2], kernel.shape[3]
    products = []
    for p, tile in enumerate(tiles):
        rows = tf.matmul(tf.reshape(tile, [-1, channels]), weights[p])  # (T, O)
        products.append(tf.reshape(rows, tf.concat([tf.shape(tile)[:3], [filters]], 0)))
    y = _output_transform(products)[:, :height, :width]  # (B, H, W, O)

    def grad(dy):
        with tf.control_dependencies([dy]):
            return conv_ops.gradients_input_first(x, dy, kernel)

    return y, grad


def transform_kernel(kernel):
    """(3, 3, C, O) -> (16, C, O): G g G^T for every channel pair, tile position p = 4 i + j."""
    g = tf.constant(_KERNEL_TRANSFORM, kernel.dtype)
    rows = tf.tensordot(g, kernel, [[1], [0]])  # (4, 3, C, O): G g along the kernel rows
    taps = tf.tensordot(g, rows, [[1], [1]])  # (4 [j], 4 [i], C, O): then G along columns
    taps = tf.transpose(taps, [1, 0, 2, 3])  # (4 [i], 4 [j], C, O)
    return tf.reshape(taps, [16, kernel.shape[2], kernel.shape[3]])


def _apply_bt(r0, r1, r2, r3):
    """B^T applied to four rows (or columns) of a tile: the 4 transformed rows."""
    return [r0 - r2, r1 + r2, r2 - r1, r1 - r3]


def _input_transform(x):
    """(B, H, W, C) -> 16 tensors (B, H'/2, W'/2, C): B^T d B at tile position p = 4 i + j.

    The input is zero-padded by one on the top and left and by one (two for an odd size) on the
    bottom and right, to (H' + 2, W' + 2) with H', W' even; ``space_to_depth(2)`` turns it into
    (H'/2 + 1, W'/2 + 1) blocks whose channels are (sub-row, sub-column, C). Tile t covers padded
    rows 2t .. 2t + 3: block t's two sub-rows, then block t + 1's.
    """
    channels = x.shape[-1]
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    padded = tf.pad(x, [[0, 0], [1, 1 + height % 2], [1, 1 + width % 2], [0, 0]])
    blocks = tf.nn.space_to_depth(padded, 2)  # (B, H'/2 + 1, W'/2 + 1, 4C)
    top, bottom = blocks[:, :-1], blocks[:, 1:]  # (B, H'/2, W'/2 + 1, 4C) each
    half = 2 * channels  # one sub-row: (sub-column, C)
    rows = _apply_bt(top[..., :half], top[..., half:], bottom[..., :half], bottom[..., half:])
    tiles = []
    for row in rows:  # (B, H'/2, W'/2 + 1, 2C)
        left, right = row[:, :, :-1], row[:, :, 1:]
        tiles += _apply_bt(left[..., :channels], left[..., channels:],
                           right[..., :channels], right[..., channels:])
    return tiles


def _output_transform(products):
    """16 x (B, H'/2, W'/2, O) -> (B, H', W', O): A^T m A, the tiles laid out by depth_to_space."""
    columns = [(m[0] + m[1] + m[2], m[1] - m[2] - m[3])  # A^T along j, per row i
               for m in (products[4 * i:4 * i + 4] for i in range(4))]
    outputs = []
    for dy in range(2):
        for dx in range(2):
            c0, c1, c2, c3 = (columns[i][dx] for i in range(4))
            outputs.append(c0 + c1 + c2 if dy == 0 else c1 - c2 - c3)  # A^T along i
    return tf.nn.depth_to_space(tf.concat(outputs, axis=-1), 2)  # channel (dy, dx, O)
