"""Stride-1 "same" convolution whose gradient is computed with forward convs and matmuls.

Not a step of the method: a CPU kernel (``keras_maskrcnn.accel``). The forward pass is
``tf.nn.conv2d`` unchanged, so outputs are identical; gradients agree with TensorFlow's to
float32 rounding (tests/accel/test_accel_conv.py).

Shape shorthand:
    B  batch size;  H, W  feature map height and width
    C  input channels;  O  output channels;  k  kernel size (odd)

Why: TensorFlow's CPU gradient kernels of a convolution (Conv2DBackpropInput and
Conv2DBackpropFilter) are slower than its forward conv and a plain matmul of the same size
(bench/README.md, "Measurements behind the CPU kernels"). For stride 1, "same" padding and no
dilation the two gradients are ordinary products:
    * input gradient: the forward conv of dy with the kernel flipped in space and with its
      input and output channels swapped (a "full" correlation, i.e. a transposed conv, which
      for stride 1 and symmetric padding k // 2 is again a "same" conv);
    * kernel gradient: for each of the k * k taps (i, j), the (C, O) product
      x_shifted(i, j)^T @ dy over all B * H * W positions, x_shifted being the zero-padded input
      shifted by the tap (a row offset of the flattened padded input, see
      ``_kernel_gradient``).
"""
import tensorflow as tf


def conv2d_same(x, kernel):
    """``tf.nn.conv2d(x, kernel, 1, "SAME")`` with the matmul-based gradient above.

    Args:
        x: (B, H, W, C) float NHWC features (H, W may be dynamic).
        kernel: (k, k, C, O) float, k odd (1 or 3 in Mask R-CNN).

    Returns:
        (B, H, W, O) convolution output (same dtype as x).
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, x.dtype)  # a (Keras) variable's value, autocast
    size = kernel.shape[0]
    if size is None or size % 2 != 1 or kernel.shape[1] != size:
        raise ValueError(f"conv2d_same needs a square odd kernel, got shape {kernel.shape}")
    return _conv2d_same(x, kernel)


@tf.custom_gradient
def _conv2d_same(x, kernel):
    y = tf.nn.conv2d(x, kernel, 1, "SAME")

    def grad(dy):
        # The gradient's own copies of x and of the kernel (padded x, flipped kernel) depend on
        # x alone: without this edge TensorFlow's executor builds them during the forward pass
        # and holds them until the backward pass (peak memory).
        with tf.control_dependencies([dy]):
            return gradients_input_first(x, dy, kernel)

    return y, grad


def gradients_input_first(x, dy, kernel):
    """(dL/dx, dL/dkernel) of the "same" conv, the kernel's computed after the input's.

    The optimizer updates the kernel once its gradient exists; computed first, that update
    ran while the input gradient still held the forward pass' read of the kernel, and
    TensorFlow copied the variable to update it (copy on write; see ``accel.dense``).
    """
    dx = _input_gradient(dy, kernel)
    with tf.control_dependencies([dx]):
        return dx, _kernel_gradient(x, dy, kernel.shape)


def _input_gradient(dy, kernel):
    """dL/dx (B, H, W, C): dy (B, H, W, O) correlated with the flipped, transposed kernel."""
    flipped = tf.reverse(kernel, axis=[0, 1])  # (k, k, C, O), spatially flipped
    swapped = tf.transpose(flipped, [0, 1, 3, 2])  # (k, k, O, C)
    return tf.nn.conv2d(dy, swapped, 1, "SAME")


def _kernel_gradient(x, dy, kernel_shape):
    """dL/dkernel (k, k, C, O): per tap, shifted padded input^T @ dy over all positions.

    Without copying a shifted input per tap: x is zero-padded to (B, H + 2p, W + 2p) and dy is
    placed on the same grid (zeros in the extra rows and columns); flattened row-major, the
    input seen by tap (i, j) at every position is the input rows shifted by the constant
    offset i * (W + 2p) + j, so each tap multiplies a slice of rows of the flat input (an
    outer-dimension slice: TensorFlow shares its buffer) with a slice of the flat dy. A shift
    never crosses into the next image (y + i <= H + 2p - 1); the padding rows of dy are zero
    and contribute nothing.
    """
    size, channels, filters = kernel_shape[0], kernel_shape[2], kernel_shape[3]
    if size == 1:
        x_rows = tf.reshape(x, [-1, channels])  # (B * H * W, C)
        dy_rows = tf.reshape(dy, [-1, filters])  # (B * H * W, O)
        return tf.reshape(tf.matmul(x_rows, dy_rows, transpose_a=True), kernel_shape)
    pad = size // 2
    width = tf.shape(x)[2] + 2 * pad  # W + 2p: the flat offset of one row down
    x_rows = tf.reshape(tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]),
                        [-1, channels])  # (B * (H + 2p) * (W + 2p), C)
    dy_rows = tf.reshape(tf.pad(dy, [[0, 0], [0, 2 * pad], [0, 2 * pad], [0, 0]]),
                         [-1, filters])  # (B * (H + 2p) * (W + 2p), O), dy on the same grid
    length = tf.shape(x_rows)[0] - (size - 1) * (width + 1)  # rows every tap can shift
    dy_rows = dy_rows[:length]  # covers every real position of the last image
    taps = []
    for i in range(size):
        for j in range(size):
            offset = i * width + j
            shifted = x_rows[offset:offset + length]  # (L, C): input of tap (i, j)
            taps.append(tf.matmul(shifted, dy_rows, transpose_a=True))  # (C, O)
    return tf.reshape(tf.stack(taps), kernel_shape)  # (k * k, C, O) -> (k, k, C, O)


def conv2d_transpose_unstrided_blocks(x, kernel):
    """A transposed conv whose stride equals its kernel size, "valid", as matmul + depth_to_space.

    With stride = kernel size s the s x s output blocks of the input pixels do not overlap:
    output[s * i + a, s * j + b, o] = sum_c x[i, j, c] * kernel[a, b, o, c] (TensorFlow's
    ``conv2d_transpose`` convention, kernel not flipped). That is one (C, s * s * O) matmul per
    pixel followed by ``depth_to_space`` (channel (a * s + b) * O + o -> offset (a, b)); the
    matmul runs faster than TF's CPU kernel for it (Conv2DBackpropInput; bench/README.md).

    Args:
        x: (B, H, W, C) float NHWC.
        kernel: (s, s, O, C) float, Keras ``Conv2DTranspose`` layout.

    Returns:
        (B, s * H, s * W, O), equal to ``tf.nn.conv2d_transpose(x, kernel, ..., strides=s,
        padding="VALID")``.
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, x.dtype)
    size, channels = kernel.shape[0], kernel.shape[3]
    if kernel.shape[1] != size:
        raise ValueError(f"needs a square kernel, got shape {kernel.shape}")
    weights = tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]),
                         [channels, -1])  # (s, s, O, C) -> (C, s * s * O), unit (a, b, o)
    shape = tf.shape(x)
    blocks = tf.matmul(tf.reshape(x, [-1, channels]), weights)  # (B * H * W, s * s * O)
    units = size * size * kernel.shape[2]  # explicit: -1 cannot be inferred when B * H * W = 0
    blocks = tf.reshape(blocks, tf.concat([shape[:3], [units]], 0))  # (B, H, W, s * s * O)
    return tf.nn.depth_to_space(blocks, size)  # (B, s * H, s * W, O)
