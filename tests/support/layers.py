"""The layer harness: the Keras checks every serializable layer of the package passes.

A ``LayerCase`` names a layer factory, example inputs and the layer's expectations; the
``check_*`` functions take a case (tests/layers/test_layer_harness.py and
tests/models/test_backbone_harness.py run each check on each case):

* ``check_config_round_trip``: ``from_config(get_config())`` and
  ``deserialize_keras_object(serialize_keras_object(layer))`` give the same class and config,
  and equal outputs once the weights are copied (a seeded layer: the same first draw).
* ``check_keras_file_round_trip``: a functional model around the layer, saved as ``.keras`` and
  loaded, gives equal outputs (layers that take an unbatched argument, e.g. the anchors, go
  through ``serialize_keras_object`` instead: ``keras_file=False``).
* ``check_symbolic_shapes``: ``keras.Input`` outputs have the eager shapes (batch aside); the
  example maps have sizes not divisible by 32.
* ``check_dtype_policy``: under ``mixed_bfloat16`` (the ``dtype`` argument; a global policy too
  where the sub-layers take that one) the layer builds, its variables stay float32,
  its floating outputs have ``mixed_output_dtype`` and the others keep their dtype.
"""
import dataclasses
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class LayerCase:
    """One layer under the harness.

    Args:
        id: the pytest id.
        make: ``make(**kwargs)`` -> a fresh layer (``dtype`` is passed through kwargs).
        inputs: ``inputs(rng)`` -> tuple of the positional call arguments (arrays or dicts of
            arrays, batch first).
        unbatched: positions of arguments that have no batch dimension: passed as they are
            (not as ``keras.Input``) to the symbolic call.
        has_weights: whether the built layer has variables (a sampler or a post-processor has
            none, or only a seed generator's state).
        keras_file: whether the ``.keras`` round trip runs through a functional model (False:
            ``serialize_keras_object`` / ``deserialize_keras_object`` instead).
        mixed_output_dtype: the dtype of the floating outputs under ``mixed_bfloat16``.
        dtype_argument_reaches_sublayers: False where the layer's sub-layers take the global
            policy rather than the layer's ``dtype`` argument (the FPN, the ResNet): the dtype
            check then builds the layer under a global ``mixed_bfloat16`` policy, as
            ``builders.build_model`` does.
    """
    id: str
    make: Callable[..., keras.layers.Layer]
    inputs: Callable[[np.random.Generator], tuple]
    unbatched: tuple = ()
    has_weights: bool = True
    keras_file: bool = True
    mixed_output_dtype: str = "float32"
    dtype_argument_reaches_sublayers: bool = True
    call_kwargs: dict = dataclasses.field(default_factory=dict)

    def __repr__(self):
        return self.id


def _flat(outputs):
    return [np.asarray(keras.ops.convert_to_numpy(x)) for x in keras.tree.flatten(outputs)]


def assert_outputs_equal(first: Any, second: Any):
    a, b = _flat(first), _flat(second)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(x, y, err_msg=f"output {i}")


def assert_config_round_trip(layer):
    """``from_config`` and ``serialize_keras_object`` give the same class and config."""
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
    return restored


def _copy_and_compare(case, layer, clone, args):
    """``clone`` is fresh (never called): its first call is compared with ``layer``'s."""
    ours = layer(*args, **case.call_kwargs)
    theirs = clone(*args, **case.call_kwargs)
    if case.has_weights:
        assert layer.weights, f"{case.id}: expected variables"
        clone.set_weights(layer.get_weights())
        theirs = clone(*args, **case.call_kwargs)
    assert_outputs_equal(ours, theirs)


def check_config_round_trip(case, rng):
    args = case.inputs(rng)
    layer = case.make()
    config = layer.get_config()
    assert_config_round_trip(layer)
    _copy_and_compare(case, layer, type(layer).from_config(config), args)
    layer = case.make()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    _copy_and_compare(case, layer, restored, args)


def _symbolic(case, args):
    """keras.Input for every batched argument (static shapes, batch None)."""
    def one(x):
        x = np.asarray(x)
        return keras.Input(x.shape[1:], dtype=str(x.dtype))

    return [arg if i in case.unbatched else keras.tree.map_structure(one, arg)
            for i, arg in enumerate(args)]


def check_keras_file_round_trip(case, rng, tmp_path):
    args = case.inputs(rng)
    if not case.keras_file:
        layer = case.make()
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(layer))
        _copy_and_compare(case, layer, restored, args)
        return
    inputs = _symbolic(case, args)
    model = keras.Model(inputs, case.make()(*inputs, **case.call_kwargs))
    assert bool(model.weights) == case.has_weights
    path = str(tmp_path / f"{case.id}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_outputs_equal(model(args), loaded(args))  # both first calls (a seeded layer too)


def check_symbolic_shapes(case, rng):
    args = case.inputs(rng)
    layer = case.make()
    symbolic = layer(*_symbolic(case, args), **case.call_kwargs)
    eager = layer(*args, **case.call_kwargs)
    keras.tree.assert_same_structure(symbolic, eager)
    for s, e in zip(keras.tree.flatten(symbolic), keras.tree.flatten(eager)):
        assert s.shape[0] is None and tuple(s.shape[1:]) == tuple(e.shape[1:])
        assert keras.backend.standardize_dtype(s.dtype) == keras.backend.standardize_dtype(
            e.dtype)


def check_dtype_policy(case, rng):
    args = case.inputs(rng)
    reference = keras.tree.flatten(case.make()(*args, **case.call_kwargs))
    previous = keras.config.dtype_policy()
    if not case.dtype_argument_reaches_sublayers:
        keras.config.set_dtype_policy("mixed_bfloat16")  # as builders.build_model
    try:
        layer = case.make(dtype="mixed_bfloat16")
    finally:
        keras.config.set_dtype_policy(previous)
    outputs = keras.tree.flatten(layer(*args, **case.call_kwargs))
    assert layer.dtype_policy.name == "mixed_bfloat16"
    assert bool(layer.weights) == case.has_weights
    for v in layer.weights:
        if v.dtype != "float32":  # a seed generator's state is an integer counter
            assert "seed" in v.path and not v.trainable, v.path
    assert any(v.dtype == "float32" for v in layer.weights) or not layer.trainable_weights
    for out, ref in zip(outputs, reference):
        if tf.as_dtype(ref.dtype).is_floating:
            assert out.dtype == tf.as_dtype(case.mixed_output_dtype), (case.id, out.dtype)
        else:
            assert out.dtype == ref.dtype, (case.id, out.dtype)
