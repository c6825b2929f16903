"""accel.conv.conv2d_same and accel.layers (CpuConv2D, CpuConv2DTranspose, CpuDense): outputs and
gradients equal TensorFlow's and Keras'."""
import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.accel import layers as accel_layers
from keras_maskrcnn.accel.conv import conv2d_same
from keras_maskrcnn.accel.layers import (CpuConv2D, CpuConv2DTranspose, CpuDense,
                                         conv2d_eligible, conv2d_transpose_eligible)
from support.accel import conv_grads, reference_conv


@pytest.mark.parametrize("shape,size,filters", [((2, 9, 7, 5), 3, 4), ((1, 6, 11, 3), 1, 6),
                                                ((3, 5, 5, 2), 5, 3), ((1, 1, 2, 4), 3, 2)])
def test_values_and_gradients_match_tensorflow(shape, size, filters):
    rng = np.random.default_rng(size * 10 + shape[0])
    x = tf.constant(rng.normal(size=shape), tf.float32)
    kernel = tf.constant(rng.normal(size=(size, size, shape[-1], filters)), tf.float32)
    upstream = tf.constant(rng.normal(size=shape[:3] + (filters,)), tf.float32)
    ours = tf.function(lambda *a: conv_grads(conv2d_same, *a))(x, kernel, upstream)
    theirs = conv_grads(reference_conv, x, kernel, upstream)
    for name, a, b in zip(("output", "dx", "dkernel"), ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_gradient_hand_case_and_mutation():
    """1-channel 3x3 on a 2x2 image: dkernel[i, j] = sum of x shifted by the tap, by hand."""
    x = tf.constant([[[[1.0], [2.0]], [[3.0], [4.0]]]])  # (1, 2, 2, 1)
    kernel = tf.zeros((3, 3, 1, 1))
    _, _, dkernel = conv_grads(conv2d_same, x, kernel, tf.ones((1, 2, 2, 1)))
    # tap (i, j) sees x[y + i - 1, x + j - 1] for every output pixel (zero outside)
    expected = [[1.0, 3.0, 2.0], [4.0, 10.0, 6.0], [3.0, 7.0, 4.0]]
    np.testing.assert_allclose(dkernel.numpy()[..., 0, 0], expected)
    # the un-flipped kernel would give a different input gradient: the test can fail
    k = tf.constant(np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1))
    _, dx, _ = conv_grads(conv2d_same, x, k, tf.ones((1, 2, 2, 1)))
    wrong = tf.nn.conv2d(tf.ones((1, 2, 2, 1)), tf.transpose(k, [0, 1, 3, 2]), 1, "SAME")
    assert not np.allclose(dx.numpy(), wrong.numpy())


def test_rejects_even_or_non_square_kernels():
    with pytest.raises(ValueError, match="odd"):
        conv2d_same(tf.zeros((1, 4, 4, 1)), tf.zeros((2, 2, 1, 1)))


def _assert_same_outputs_and_gradients(ours, reference, x):
    """Both layers' outputs and gradients (input, then weights) of sum(y^2) agree."""
    results = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_variables])])
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_layer_equals_keras_conv2d_and_falls_back_when_strided():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 8, 10, 3)), tf.float32)
    for kwargs, fast in (({"padding": "same"}, True), ({"padding": "same", "strides": 2}, False),
                         ({"padding": "same", "dilation_rate": 2}, False),
                         ({"padding": "valid"}, False),
                         ({"padding": "valid", "kernel_size": 1}, True)):  # 1x1: valid = same
        kwargs = {"kernel_size": 3, **kwargs}
        ours = CpuConv2D(4, activation="relu", **kwargs)
        keras_layer = keras.layers.Conv2D(4, activation="relu", **kwargs)
        ours.build(x.shape)
        keras_layer.build(x.shape)
        keras_layer.set_weights(ours.get_weights())
        assert conv2d_eligible(ours) == fast
        _assert_same_outputs_and_gradients(ours, keras_layer, x)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(restored) is CpuConv2D and restored.get_config() == ours.get_config()


def test_mixed_bfloat16_policy():
    layer = CpuConv2D(4, 3, padding="same", dtype="mixed_bfloat16")
    x = tf.random.normal((1, 6, 6, 3))
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert y.dtype == tf.bfloat16
    assert all(g.dtype == tf.float32 and np.isfinite(g.numpy()).all() for g in grads)


def test_only_eligible_convolutions_take_the_matmul_gradient(monkeypatch):
    """An eligible CpuConv2D calls ``conv2d_same``; a strided one and Keras' Conv2D do not."""
    calls = []
    monkeypatch.setattr(accel_layers, "conv2d_same", lambda *a: calls.append(1) or
                        tf.nn.conv2d(a[0], a[1], 1, "SAME"))
    CpuConv2D(2, 3, padding="same")(tf.zeros((1, 4, 4, 1)))
    assert calls == [1]
    CpuConv2D(2, 3, strides=2, padding="same")(tf.zeros((1, 4, 4, 1)))
    keras.layers.Conv2D(2, 3, padding="same")(tf.zeros((1, 4, 4, 1)))
    assert calls == [1]


def test_conv_transpose_layer_equals_keras_and_falls_back():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(3, 5, 4, 6)), tf.float32)
    for kwargs, fast in (({"kernel_size": 2, "strides": 2}, True),
                         ({"kernel_size": 3, "strides": 3}, True),
                         ({"kernel_size": 4, "strides": 2}, False)):
        ours = CpuConv2DTranspose(7, activation="relu", padding="valid", **kwargs)
        reference = keras.layers.Conv2DTranspose(7, activation="relu", padding="valid", **kwargs)
        ours.build(x.shape)
        reference.build(x.shape)
        weights = [rng.normal(size=w.shape).astype(np.float32) for w in ours.get_weights()]
        ours.set_weights(weights)
        reference.set_weights(weights)
        assert conv2d_transpose_eligible(ours) == fast
        _assert_same_outputs_and_gradients(ours, reference, x)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(restored) is CpuConv2DTranspose


def test_block_matmul_mutation_flipped_kernel_differs():
    """The kernel is not flipped: flipping it changes the output (the test above can fail)."""
    from keras_maskrcnn.accel.conv import conv2d_transpose_unstrided_blocks
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(1, 3, 3, 2)), tf.float32)
    k = tf.constant(rng.normal(size=(2, 2, 4, 2)), tf.float32)
    reference = tf.nn.conv2d_transpose(x, k, (1, 6, 6, 4), 2, "VALID")
    np.testing.assert_allclose(conv2d_transpose_unstrided_blocks(x, k).numpy(),
                               reference.numpy(), rtol=1e-5, atol=1e-5)
    flipped = conv2d_transpose_unstrided_blocks(x, tf.reverse(k, [0, 1]))
    assert not np.allclose(flipped.numpy(), reference.numpy(), atol=1e-3)


def test_gradient_copies_wait_for_the_upstream_gradient(monkeypatch):
    """The padded input and the flipped kernel of the gradient are built once dy exists, not
    in the forward pass (where the executor would run them early and hold them)."""
    from keras_maskrcnn.accel import conv as conv_ops

    x = tf.random.normal([2, 6, 7, 3])
    kernel = tf.Variable(tf.random.normal([3, 3, 3, 4]))

    def gradient_graph():
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(conv_ops.conv2d_same(x, kernel) ** 2)
            return tape.gradient(loss, [x, kernel])
        return step.get_concrete_function().graph

    def early_ops(graph):
        """Pad / ReverseV2 ops of the gradient with no (transitive) input from the loss."""
        ops = [op for op in graph.get_operations() if op.type in ("Pad", "ReverseV2")]
        assert ops
        loss_side = set()
        for op in graph.get_operations():  # topological order
            if op.type in ("Sum", "Pow") or any(
                    i.op in loss_side for i in op.inputs) or any(
                    c in loss_side for c in op.control_inputs):
                loss_side.add(op)
        return [op.name for op in ops if op not in loss_side]

    assert early_ops(gradient_graph()) == []
    monkeypatch.setattr(tf, "control_dependencies", lambda deps: contextlib.nullcontext())
    assert early_ops(gradient_graph())  # mutation: without the edge they can run early


def _depends_on(op, target):
    """True when ``op`` (transitively, data or control) depends on ``target``."""
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        if current is target:
            return True
        if current in seen:
            continue
        seen.add(current)
        stack.extend(i.op for i in current.inputs)
        stack.extend(current.control_inputs)
    return False


def _kernel_gradient_waits_for_input_gradient(layer, x):
    """In the traced gradient, the kernel gradient's op depends on the input gradient's."""
    if not layer.built:
        layer.build(x.shape)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(loss, [x, layer.kernel])

    graph = step.get_concrete_function().graph
    dx, dkernel = (t.op.inputs[0].op for t in graph.outputs[:2])  # under the Identity
    return _depends_on(dkernel, dx)


@pytest.mark.parametrize("make, shape", [
    (lambda: CpuDense(5, activation="relu"), (2, 3, 7)),
    (lambda: CpuConv2D(4, 3, padding="same"), (2, 6, 7, 3)),
    (lambda: CpuConv2D(4, 3, padding="same", winograd=True), (2, 6, 7, 3))])
def test_kernel_gradient_after_input_gradient(make, shape, monkeypatch):
    """dW waits for dx, so the optimizer's update of W (after dW) finds the forward read of W
    released and updates in place; values equal Keras' own layers."""
    x = tf.random.normal(shape)
    ours = make()
    reference = (keras.layers.Dense if isinstance(ours, CpuDense) else keras.layers.Conv2D)(
        **{k: v for k, v in ours.get_config().items() if k != "winograd"})
    ours.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    _assert_same_outputs_and_gradients(ours, reference, x)
    assert _kernel_gradient_waits_for_input_gradient(ours, x)
    assert not _kernel_gradient_waits_for_input_gradient(reference, x)  # Keras' order: free
    monkeypatch.setattr(tf, "control_dependencies", lambda deps: contextlib.nullcontext())
    assert not _kernel_gradient_waits_for_input_gradient(make(), x)  # mutation: edge removed
