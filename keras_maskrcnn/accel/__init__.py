"""CPU acceleration behind one switch (``model.accel``): the model reads the same without it.

Not a step of the method: kernels and settings that make the same computation faster or
leaner on a CPU. Model files build plain ``keras.layers.Conv2D`` / ``Conv2DTranspose`` /
``Dense``; ``builders.build_model`` calls ``accelerate`` when ``resolve(model.accel)`` is true:

- ``layers``: ``CpuConv2D`` (matmul-based conv gradient, ``conv``; Winograd forward pass,
  ``winograd``), ``CpuConv2DTranspose`` (block matmul, ``conv``), ``CpuDense`` (input gradient
  first, ``dense``), swapped in for the plain Keras layers where their configuration fits;
- the per-RoI conv heads run ``INFERENCE_CHUNK`` RoIs at a time at inference.

Not switched by ``model.accel`` (they are not per model):
- ``memory`` and ``callbacks``: the lean allocator, huge pages and malloc trim of
  ``train.py --low-memory`` (process-wide, chosen before TensorFlow is imported);
- ``optimizer``: ``UpdateAfterGradient``, always mixed into ``training.SGD`` / ``AdamW`` (each
  weight updated as soon as its gradient exists; Keras' arithmetic and order per variable).

Outputs equal plain Keras' to float32 rounding (tests/accel/test_accel.py). Why each kernel exists
and what it measured: the module docstrings and bench/README.md. Importing this package does
not import TensorFlow (``accel.memory`` must run first).
"""
SETTINGS = ("auto", "on", "off")

#: RoIs per pass of a per-RoI conv head at inference: the matmuls keep enough rows, and a
#: quarter of the activations (and Winograd tiles) of 100 detections is alive at a time.
INFERENCE_CHUNK = 25


def resolve(setting):
    """Whether acceleration is on for ``setting``: "on", "off", or "auto" (on when TensorFlow
    sees no GPU or TPU, whose own kernels are the fast path there)."""
    if setting not in SETTINGS:
        raise ValueError(f"accel must be one of {SETTINGS}, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    import tensorflow as tf
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def accelerate(root, roi_heads=(), inference_chunk=INFERENCE_CHUNK):
    """Switches ``root`` (a layer or model, built or not) to the CPU kernels, in place.

    Every layer inside ``root`` (itself included) whose class is exactly ``keras.layers.Conv2D``,
    ``Conv2DTranspose`` or ``Dense`` and whose configuration the kernel covers gets the
    accelerated subclass (``layers.ACCELERATED``): same weights, names and config. The 3x3
    convs inside ``roi_heads`` (the mask and keypoint heads; None entries are skipped) also run
    Winograd's F(2x2, 3x3), and those heads run ``inference_chunk`` RoIs at a time at inference.

    Args:
        root: a ``keras.layers.Layer`` (``keras.Model`` included).
        roi_heads: per-RoI conv heads inside ``root`` with an ``inference_chunk`` attribute.
        inference_chunk: RoIs per pass at inference for ``roi_heads``.

    Returns:
        The list of layers whose class was swapped.
    """
    from keras_maskrcnn.accel.layers import ACCELERATED, CpuConv2D

    swapped = []
    for layer in root._flatten_layers(include_self=True, recursive=True):
        accelerated, eligible = ACCELERATED.get(type(layer), (None, None))
        if accelerated is not None and eligible(layer):
            layer.__class__ = accelerated  # a subclass overriding only the compute method
            swapped.append(layer)
    for head in roi_heads:
        if head is None:
            continue
        for layer in head._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, CpuConv2D) and tuple(layer.kernel_size) == (3, 3):
                layer.winograd = True
        head.inference_chunk = int(inference_chunk)
    return swapped
