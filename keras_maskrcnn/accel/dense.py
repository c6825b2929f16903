"""A dense (fully connected) product whose kernel gradient waits for its input gradient.

Not a step of the method: a memory-ordering kernel (``keras_maskrcnn.accel``). Values are the
same as ``tf.matmul``'s.

Shape shorthand: N  leading positions (any number of axes);  D  input units;  U  output units.

Why: in a training step the optimizer updates a weight as soon as its gradient exists
(``accel.optimizer.UpdateAfterGradient``). TensorFlow computes a product's two gradients,
dx = dy W^T and dW = x^T dy, independently; when dW came first, the update of W ran while dx
still held the forward pass' read of W, and TensorFlow copied the variable to update it (copy
on write): the box head's fc6 (12544 x 1024) was copied at the peak of a Mask R-CNN step.
Ordered dx first, the read is released before dW exists.
"""
import tensorflow as tf


def dense(x, kernel):
    """x @ kernel over the last axis: (..., D) x (D, U) -> (..., U), input gradient first.

    Args:
        x: (N..., D) float.
        kernel: (D, U), cast to x's dtype (a Keras variable's value, autocast).
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, x.dtype)
    return _dense(x, kernel)


@tf.custom_gradient
def _dense(x, kernel):
    units = kernel.shape[-1]
    rows = tf.reshape(x, [-1, tf.shape(x)[-1]])  # (N, D)
    y = tf.reshape(tf.matmul(rows, kernel), tf.concat([tf.shape(x)[:-1], [units]], 0))
    y = tf.ensure_shape(y, x.shape[:-1].concatenate([units]))

    def grad(dy):
        dy_rows = tf.reshape(dy, [-1, units])  # (N, U)
        dx = tf.reshape(tf.matmul(dy_rows, kernel, transpose_b=True), tf.shape(x))
        with tf.control_dependencies([dx]):  # W's read is released before dW (and the update)
            dkernel = tf.matmul(rows, dy_rows, transpose_a=True)  # (D, U)
        return dx, dkernel

    return y, grad
