"""accel.optimizer.UpdateAfterGradient in training.SGD / AdamW: same updates as Keras',
scheduled after the backward; the registered names saved .keras files use are unchanged."""
import keras
import numpy as np
import tensorflow as tf

from keras_maskrcnn import training


def _train_graph(optimizer_class, **kwargs):
    """A two-layer model's tape + apply step traced in a tf.function: (graph, gradient ops)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    optimizer = optimizer_class(learning_rate=0.1, **kwargs)
    optimizer.build(model.trainable_variables)
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    gradient_ops = []

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        gradient_ops.extend(g.op for g in grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    graph = step.get_concrete_function().graph
    return graph, gradient_ops, (model, optimizer, step)


def _momentum_reads(graph, optimizer):
    """The step graph's ReadVariableOps of the optimizer's momentum slots."""
    internal = {id(external): inner for external, inner in graph.captures}
    reads = []
    for variable in optimizer.variables:
        if "momentum" in variable.path:
            placeholder = internal[id(variable.value.handle)]
            reads += [op for op in placeholder.consumers() if op.type == "ReadVariableOp"]
    return reads


def test_momentum_is_read_only_after_its_gradient():
    """SGD's ``momentum * m`` reads its slot once the variable's gradient exists (else the
    executor runs it during the forward pass and holds a variable-sized copy until the
    backward pass); each slot waits for one gradient, not for all of them."""
    for optimizer_class, waits in ((training.SGD, True), (keras.optimizers.SGD, False)):
        graph, gradient_ops, (_, optimizer, _) = _train_graph(optimizer_class, momentum=0.9)
        reads = _momentum_reads(graph, optimizer)
        assert len(reads) >= 4  # slots of two kernels and two biases (read once or twice)
        waited = [[g for g in gradient_ops if g in op.control_inputs] for op in reads]
        assert [len(w) for w in waited] == [int(waits)] * len(reads), optimizer_class
        if waits:
            assert {w[0] for w in waited} == set(gradient_ops)  # each its own gradient


def test_updates_equal_keras_sgd_and_adamw():
    for ours, theirs, kwargs in (
            (training.SGD, keras.optimizers.SGD, {"momentum": 0.9, "weight_decay": 1e-2}),
            (training.AdamW, keras.optimizers.AdamW, {"weight_decay": 1e-2})):
        weights = []
        for optimizer_class in (ours, theirs):
            _, _, (model, _, step) = _train_graph(optimizer_class, **kwargs)
            initial = model.trainable_variables[0].numpy()
            for _ in range(3):
                step()
            weights.append([w.numpy() for w in model.trainable_variables])
            assert not np.allclose(weights[-1][0], initial)  # the steps did update
        for a, b in zip(*weights):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_single_replica_updates_do_not_wait_for_every_gradient():
    """Keras sums the gradients over the replicas through one identity over all of them, also
    with one replica, so no update could start before the last gradient; ours skip it."""
    for optimizer_class, grouped in ((training.SGD, False), (keras.optimizers.SGD, True)):
        graph, gradient_ops, _ = _train_graph(optimizer_class, momentum=0.9)
        fan_in = [op for op in graph.get_operations()
                  if {i.op for i in op.inputs} >= set(gradient_ops)]
        assert bool(fan_in) == grouped, (optimizer_class, [op.type for op in fan_in])


def test_registered_names_are_unchanged():
    """Saved .keras files name the optimizers ``keras_maskrcnn>SGD`` / ``keras_maskrcnn>AdamW``."""
    for optimizer_class in (training.SGD, training.AdamW):
        name = f"keras_maskrcnn>{optimizer_class.__name__}"
        assert keras.saving.get_registered_name(optimizer_class) == name
        assert keras.saving.get_registered_object(name) is optimizer_class
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(optimizer_class(learning_rate=0.1)))
        assert type(restored) is optimizer_class
