"""The gradient harness of the accel conv tests: values and gradients of a conv function."""
import numpy as np
import tensorflow as tf


def conv_grads(conv, x, kernel, upstream):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv(x, kernel)
        loss = tf.reduce_sum(y * upstream)
    return (y, *tape.gradient(loss, [x, kernel]))


def reference_conv(x, kernel):
    if x.shape[0] == 0:  # TF's oneDNN conv returns the input's shape for an empty batch
        return tf.zeros(x.shape[:3] + kernel.shape[3:], x.dtype)
    return tf.nn.conv2d(x, kernel, 1, "SAME")


def assert_same_inference_outputs(plain, fast, batch):
    """A model with ``model.accel`` off and one with it on (same weights) give the same
    inference outputs, every key, on ``batch`` (rtol 1e-4, atol 1e-5), with detections."""
    inputs = {"images": batch["images"], "image_sizes": batch["image_sizes"]}
    expected, got = plain(inputs), fast(inputs)
    assert int(tf.reduce_sum(expected["num_detections"])) > 0
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=key)
