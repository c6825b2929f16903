"""Dense prediction head shared over pyramid levels: the RPN head (Faster R-CNN, Ren et al.
2015, section 3.1, shared over levels as in the FPN paper, section 4.1) and YOLACT's prediction
head (Bolya et al. 2019, sections 3.2 and 4, figure 4): a conv tower, then sibling convs
emitting named outputs for every anchor (objectness, box deltas, class logits, mask
coefficients, ...).

Shape shorthand:
    B  batch size
    L  pyramid levels, e.g. "P2".."P6" (L = 5)
    A  anchors per location
    N  anchors per image, all levels concatenated (N = sum_l H_l * W_l * A)
    D  channels of one named output per anchor (1 objectness, 4 deltas, 81 classes, ...)

Conventions pinned here (tests/layers/test_dense_head.py; tests/layers/test_rpn.py against
torchvision):
    * Levels are taken in ``feature_keys`` order: the keys of the feature dict sorted
      naturally ("P2" < "P3" < ... < "P10"), the order of ``anchors.multilevel_anchors``.
      Within a level the order is torchvision's and YOLACT's: location row-major (y, then x),
      anchor minor, i.e. index (i * W + j) * A + a; an output's conv channel a * D + d
      (torchvision's ``view(B, A, D, H, W)``, YOLACT's ``permute(0, 2, 3, 1).view(B, -1, D)``).
    * One set of weights for every level. Tower convs: 3x3, "same" (= torch padding 1), ReLU;
      predictor convs: ``predictor_kernel_size`` (1 for the RPN, 3 for YOLACT), "same".
    * Outputs are float32 (box decoding and losses stay float32 under mixed precision); an
      output's activation (e.g. YOLACT's tanh on mask coefficients) is applied after the cast.
"""
import keras
import tensorflow as tf

from keras_maskrcnn.ops.anchors import feature_keys, level_sizes


def _validated(num_anchors, output_channels, output_activations, squeeze_outputs):
    if int(num_anchors) <= 0:
        raise ValueError(f"num_anchors must be positive, got {num_anchors}")
    output_channels = {str(k): int(v) for k, v in dict(output_channels).items()}
    if not output_channels or min(output_channels.values()) <= 0:
        raise ValueError(f"output_channels needs >= 1 output with positive channels, got "
                         f"{output_channels}")
    output_activations = dict(output_activations or {})
    for name, activation in output_activations.items():
        if name not in output_channels:
            raise ValueError(f"activation for unknown output {name!r} ({list(output_channels)})")
        keras.activations.get(activation)  # raises on an unknown activation
    squeeze_outputs = tuple(squeeze_outputs)
    for name in squeeze_outputs:
        if output_channels.get(name) != 1:
            raise ValueError(f"squeeze_outputs: {name!r} must be an output with 1 channel, got "
                             f"{output_channels}")
    return output_channels, output_activations, squeeze_outputs


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class DenseHead(keras.layers.Layer):
    """num_convs x (3x3 conv + ReLU), then one conv per named output, shared over levels.

    Args:
        num_anchors: A, anchors per location.
        output_channels: dict name -> D, channels per anchor of each output, in the order the
            predictors are created (e.g. {"objectness": 1, "box_deltas": 4}).
        num_convs: tower depth (torchvision's ``conv_depth``; 1 in the RPN and YOLACT).
        conv_channels: tower width; None keeps the input channel count (torchvision).
        predictor_kernel_size: kernel of the sibling output convs (odd).
        output_activations: dict name -> Keras activation name applied to that output.
        squeeze_outputs: names of 1-channel outputs returned as (B, N) instead of (B, N, 1).
        kernel_initializer, bias_initializer: of every conv (each conv gets its own instance).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        features: dict level -> (B, H_l, W_l, C); every level has the same C.
    Returns:
        dict name -> (B, N, D) float32 ((B, N) for ``squeeze_outputs``), levels concatenated in
        ``feature_keys`` order (see the module docstring).

    Sub-layers: ``convs[i]`` (named ``conv_{i}``), ``predictors[name]`` (named ``name``).
    """

    def __init__(self, num_anchors, output_channels, num_convs=1, conv_channels=None,
                 predictor_kernel_size=1, output_activations=None, squeeze_outputs=(),
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.output_channels, self.output_activations, self.squeeze_outputs = _validated(
            num_anchors, output_channels, output_activations, squeeze_outputs)
        self.num_anchors = int(num_anchors)
        self.num_convs = int(num_convs)
        self.conv_channels = None if conv_channels is None else int(conv_channels)
        self.predictor_kernel_size = int(predictor_kernel_size)
        self.kernel_initializer = keras.initializers.serialize(
            keras.initializers.get(kernel_initializer))
        self.bias_initializer = keras.initializers.serialize(
            keras.initializers.get(bias_initializer))
        # filters None (conv_channels None) is set to the input channel count in build().
        self.convs = [self._conv(self.conv_channels, 3, f"conv_{i}", "relu")
                      for i in range(self.num_convs)]
        self.predictors = {name: self._conv(self.num_anchors * d, self.predictor_kernel_size, name)
                           for name, d in self.output_channels.items()}

    def _conv(self, filters, size, name, activation=None):
        # A fresh initializer per conv: one seeded instance gives equal same-shaped kernels.
        return keras.layers.Conv2D(
            filters, size, padding="same", activation=activation,
            kernel_initializer=keras.initializers.get(self.kernel_initializer),
            bias_initializer=keras.initializers.get(self.bias_initializer),
            name=name, dtype=self.dtype_policy)

    def build(self, input_shape):
        shapes = input_shape.values() if isinstance(input_shape, dict) else [input_shape]
        channels = {tuple(s)[-1] for s in shapes}
        if len(channels) != 1 or None in channels:
            raise ValueError(f"{self.name}: all levels need the same known channel count, "
                             f"got {input_shape}")
        channels = channels.pop()
        for conv in self.convs:
            if self.conv_channels is None:
                conv.filters = channels  # torchvision: the tower keeps the input channel count
            conv.build((None, None, None, channels))
            channels = conv.filters
        for conv in self.predictors.values():
            conv.build((None, None, None, channels))
        self.built = True

    def call(self, features):
        parts = {name: [] for name in self.output_channels}
        counts = level_sizes(features, self.num_anchors)  # static where H_l, W_l are
        for key, count in zip(feature_keys(features), counts):
            x = features[key]
            for conv in self.convs:
                x = conv(x)
            for name, conv in self.predictors.items():
                y = tf.cast(conv(x), tf.float32)  # (B, H, W, A * D)
                batch = tf.shape(y)[0]
                squeeze = name in self.squeeze_outputs
                # channel a * D + d -> (B, H*W*A, D): anchor minor, then the output's channels
                shape = [batch, count] if squeeze else [batch, count, self.output_channels[name]]
                parts[name].append(tf.reshape(y, shape))
        outputs = {}
        for name, level_parts in parts.items():
            y = tf.concat(level_parts, axis=1)  # (B, N, D) or (B, N)
            if name in self.output_activations:
                y = keras.activations.get(self.output_activations[name])(y)
            outputs[name] = y
        return outputs

    def compute_output_shape(self, input_shape):
        shapes = [tuple(input_shape[k]) for k in feature_keys(input_shape)]
        known = all(s[1] is not None and s[2] is not None for s in shapes)
        total = sum(s[1] * s[2] * self.num_anchors for s in shapes) if known else None
        batch = shapes[0][0]
        return {name: (batch, total) if name in self.squeeze_outputs else (batch, total, d)
                for name, d in self.output_channels.items()}

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_anchors": self.num_anchors, "output_channels": dict(self.output_channels),
            "num_convs": self.num_convs, "conv_channels": self.conv_channels,
            "predictor_kernel_size": self.predictor_kernel_size,
            "output_activations": dict(self.output_activations),
            "squeeze_outputs": list(self.squeeze_outputs),
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer})
        return config
