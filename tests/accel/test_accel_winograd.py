"""accel.winograd.conv2d_winograd_3x3 and CpuConv2D(winograd=True): equal to TF's conv."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.accel import winograd
from keras_maskrcnn.accel.layers import CpuConv2D
from keras_maskrcnn.accel.winograd import conv2d_winograd_3x3, transform_kernel
from support.accel import conv_grads, reference_conv  # the matmul-gradient conv's harness


@pytest.mark.parametrize("shape,filters", [((3, 14, 14, 8), 6), ((2, 7, 9, 5), 3),
                                           ((1, 1, 1, 4), 2), ((2, 2, 3, 4), 5),
                                           ((1, 6, 4, 16), 16)])
def test_values_and_gradients_match_tensorflow(shape, filters):
    rng = np.random.default_rng(shape[1] * 7 + shape[2])
    x = tf.constant(rng.normal(size=shape), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, shape[-1], filters)), tf.float32)
    upstream = tf.constant(rng.normal(size=shape[:3] + (filters,)), tf.float32)
    ours = tf.function(lambda *a: conv_grads(conv2d_winograd_3x3, *a))(x, kernel, upstream)
    theirs = conv_grads(reference_conv, x, kernel, upstream)
    for name, a, b in zip(("output", "dx", "dkernel"), ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_dynamic_shapes_one_trace():
    """B, H, W unknown when traced (odd and even sizes through the same graph)."""
    rng = np.random.default_rng(1)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 2)), tf.float32)
    fn = tf.function(conv2d_winograd_3x3,
                     input_signature=[tf.TensorSpec([None, None, None, 3]),
                                      tf.TensorSpec([3, 3, 3, 2])])
    for shape in ((1, 5, 8, 3), (4, 14, 14, 3), (0, 14, 14, 3), (2, 3, 1, 3)):
        x = tf.constant(rng.normal(size=shape), tf.float32)
        np.testing.assert_allclose(fn(x, kernel).numpy(), reference_conv(x, kernel).numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert fn.experimental_get_tracing_count() == 1


def test_kernel_transform_hand_case_and_mutation():
    """G g G^T for g = the 3x3 ramp 0..8, worked by hand; a wrong G (no halves) must differ."""
    g = tf.reshape(tf.range(9, dtype=tf.float32), (3, 3, 1, 1))
    ours = transform_kernel(g).numpy().reshape(4, 4)
    # G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 with g0 = [0 1 2] ...
    rows = np.array([[0, 1, 2], [4.5, 6, 7.5], [1.5, 2, 2.5], [6, 7, 8]])
    expected = np.stack([rows[:, 0], rows.sum(1) / 2, (rows[:, 0] - rows[:, 1] + rows[:, 2]) / 2,
                         rows[:, 2]], axis=1)
    np.testing.assert_allclose(ours, expected)
    x = tf.random.normal((1, 6, 6, 1))
    good = conv2d_winograd_3x3(x, g)
    np.testing.assert_allclose(good.numpy(), reference_conv(x, g).numpy(), rtol=1e-5, atol=1e-4)
    original = winograd._KERNEL_TRANSFORM
    try:
        winograd._KERNEL_TRANSFORM = np.abs(original) * 2  # a plausible slip: |G|, no halves
        assert not np.allclose(conv2d_winograd_3x3(x, g).numpy(), good.numpy(), atol=1e-2)
    finally:
        winograd._KERNEL_TRANSFORM = original


def test_rejects_other_kernel_sizes():
    with pytest.raises(ValueError, match="3x3"):
        conv2d_winograd_3x3(tf.zeros((1, 4, 4, 1)), tf.zeros((5, 5, 1, 1)))


def test_layer_winograd_equals_keras_conv2d_and_round_trips(monkeypatch):
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(3, 14, 14, 6)), tf.float32)
    calls = []
    monkeypatch.setattr("keras_maskrcnn.accel.layers.conv2d_winograd_3x3",
                        lambda x, k: (calls.append(1), winograd.conv2d_winograd_3x3(x, k))[1])
    ours = CpuConv2D(5, 3, padding="same", activation="relu", winograd=True)
    reference = keras.layers.Conv2D(5, 3, padding="same", activation="relu")
    ours.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = ours(x), reference(x)
        la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
    assert calls, "the Winograd path was not taken"
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    for ga, gb in zip(tape.gradient(la, [x, *ours.trainable_variables]),
                      tape.gradient(lb, [x, *reference.trainable_variables])):
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-4, atol=1e-3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert restored.winograd and restored.get_config() == ours.get_config()
    # not taken: 1x1 kernels, bfloat16 inputs, winograd=False
    calls.clear()
    CpuConv2D(5, 1, padding="same", winograd=True)(x)
    CpuConv2D(5, 3, padding="same", winograd=True, dtype="mixed_bfloat16")(x)
    CpuConv2D(5, 3, padding="same")(x)
    assert not calls
