"""RoI heads: box, mask and keypoint heads, each split from its class-dependent predictor.

Shape shorthand: B batch, R RoIs per image, P pooled RoI size (7 for boxes, 14 for masks and
keypoints), C input channels, D head width (fc_dim / conv_dim), K classes including background,
Kp keypoints, S mask / heatmap size (28 for masks, 56 for keypoints).

Conventions pinned here (checked against torchvision in tests/layers/test_heads.py):
- Inputs are RoI features [B, R, P, P, C] (NHWC per RoI); B and R may be unknown. Conv heads fold
  (B, R) into one batch axis for the convs and unfold afterwards.
- A head (``BoxHead``, ``MaskHead``, ``KeypointHead``) holds every layer that does not depend on
  the number of classes; its predictor (``BoxPredictor``, ``MaskPredictor``,
  ``KeypointPredictor``) holds the rest, so fine-tuning to a new class count swaps only the
  predictor. Predictor outputs are float32 whatever the compute dtype (mixed precision).
- ``BoxHead`` flattens each RoI in (P, P, C) order (NHWC); torchvision's ``TwoMLPHead`` flattens
  (C, P, P). The converter permutes fc6's input rows; the layers are otherwise identical.
- ``BoxPredictor`` box deltas are [B, R, K, 4] with torchvision's ``bbox_pred`` layout (output
  unit k * 4 + c is class k, coordinate c of (dx, dy, dw, dh)); class-agnostic gives [B, R, 1, 4].
- Transposed convs follow PyTorch's ``ConvTranspose2d(padding=p)``: a Keras "valid"
  ``Conv2DTranspose`` (output (n - 1) * stride + kernel) cropped by p pixels on every side.
- ``KeypointPredictor``'s 2x bilinear upsampling is torch's ``F.interpolate(scale_factor=2,
  mode="bilinear", align_corners=False)``, which is ``tf.image.resize`` bilinear with half-pixel
  centres (source = (dst + 0.5) / 2 - 0.5, clamped at the borders).
- Initialisation (only matters when not loading weights): 3x3/transposed convs kaiming-normal
  fan_out (torchvision's heads and predictors), fc layers kaiming-uniform(a=1) (detectron2's
  c2_xavier_fill, as the FPN), class logits N(0, 0.01) and box deltas N(0, 0.001) (detectron2;
  torchvision keeps nn.Linear's default), zero biases.
"""
import keras
import tensorflow as tf


def _kaiming_normal_fan_out():
    # torch kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out). For a
    # Conv2DTranspose kernel (kh, kw, Cout, Cin) Keras' fan_out is Cin * kh * kw, as torch's.
    return keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def _conv3x3(channels, dilation, name, dtype):
    # "same" with stride 1 pads `dilation` on every side, as torch padding=dilation for 3x3.
    return keras.layers.Conv2D(channels, 3, padding="same", dilation_rate=dilation,
                               activation="relu", kernel_initializer=_kaiming_normal_fan_out(),
                               bias_initializer="zeros", name=name, dtype=dtype)


def _fold_rois(x):
    """[B, R, H, W, C] -> [B * R, H, W, C] and the [2] int32 tensor (B, R) to unfold with."""
    if x.shape.rank != 5:
        raise ValueError(f"expected RoI features [B, R, H, W, C], got shape {x.shape}")
    lead = tf.shape(x)[:2]
    folded = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))  # [B * R, H, W, C]
    return tf.ensure_shape(folded, [None] + x.shape[2:].as_list()), lead


def _unfold_rois(y, lead, like):
    """[B * R, ...] -> [B, R, ...]; ``like`` supplies the static B and R when known."""
    out = tf.reshape(y, tf.concat([lead, tf.shape(y)[1:]], 0))  # [B, R, ...]
    return tf.ensure_shape(out, like.shape[:2].as_list() + y.shape[1:].as_list())


def _apply_to_rois(fn, inputs):
    """fn on the folded RoIs: [B, R, P, P, C] -> fn([B * R, P, P, C]) unfolded to [B, R, ...].

    No RoIs at all (B * R = 0, e.g. a training batch without positives) get one zero RoI that
    is dropped again after ``fn``: TensorFlow's oneDNN convolution (on by default on recent
    Intel CPUs, TF 2.21) returns its input's shape instead of its output's for an empty batch.
    """
    x, lead = _fold_rois(inputs)  # [B * R, P, P, C]
    count = tf.shape(x)[0]
    x = tf.pad(x, [[0, tf.cast(count == 0, tf.int32)], [0, 0], [0, 0], [0, 0]])  # >= 1 RoI
    return _unfold_rois(fn(x)[:count], lead, inputs)


def _require_known(input_shape, axes, name):
    if len(input_shape) != 5 or any(input_shape[a] is None for a in axes):
        raise ValueError(f"{name}: expected [B, R, P, P, C] with known "
                         f"{'P, P, C' if len(axes) == 3 else 'C'}, got {input_shape}")


class _ConvStack(keras.layers.Layer):
    """num_convs x (3x3 conv + ReLU) on [B, R, P, P, C] -> [B, R, P, P, conv_dim]."""

    _conv_name = "conv"

    def __init__(self, num_convs, conv_dim, dilation=1, inference_chunk=None, **kwargs):
        super().__init__(**kwargs)
        self.num_convs = int(num_convs)
        self.conv_dim = int(conv_dim)
        self.dilation = int(dilation)
        self.inference_chunk = None if inference_chunk is None else int(inference_chunk)
        self.convs = [_conv3x3(self.conv_dim, self.dilation, f"{self._conv_name}{i + 1}",
                               self.dtype_policy) for i in range(self.num_convs)]

    def build(self, input_shape):
        _require_known(input_shape, (4,), self.name)
        channels = input_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.conv_dim
        self.built = True

    def call(self, inputs, training=None):
        if training or not self.inference_chunk or not self.convs:
            return _apply_to_rois(self._stack, inputs)  # [B, R, P, P, conv_dim]
        return _apply_to_rois(lambda x: _map_in_chunks(
            self._stack, x, self.inference_chunk, self.compute_dtype, self.conv_dim), inputs)

    def _stack(self, x):
        for conv in self.convs:
            x = conv(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"num_convs": self.num_convs, "conv_dim": self.conv_dim,
                       "dilation": self.dilation, "inference_chunk": self.inference_chunk})
        return config


def _map_in_chunks(fn, x, chunk, dtype, channels):
    """fn(x) computed on x[0:chunk], x[chunk:2 * chunk], ... one after the other, concatenated.

    Fewer activations alive at a time, same values (``keras_maskrcnn.accel`` turns it on).

    Args:
        fn: [n, P, P, C] -> [n, P, P, channels], RoI by RoI independent.
        x: [N, P, P, C] (N may be dynamic, 0 included).
        chunk: RoIs per call.
        dtype: fn's output dtype.
        channels: fn's output channels.
    Returns:
        [N, P, P, channels].
    """
    total = tf.shape(x)[0]
    count = (total + chunk - 1) // chunk
    outputs = tf.TensorArray(dtype, size=count, infer_shape=False,
                             element_shape=[None] + x.shape[1:3].as_list() + [channels])

    def body(k, outputs):
        return k + 1, outputs.write(k, fn(x[k * chunk:(k + 1) * chunk]))

    _, outputs = tf.while_loop(lambda k, _: k < count, body, (tf.constant(0), outputs),
                               parallel_iterations=1)
    empty = tf.concat([[0], tf.shape(x)[1:3], [channels]], 0)
    return tf.cond(count > 0, outputs.concat, lambda: tf.zeros(empty, dtype))


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class BoxHead(keras.layers.Layer):
    """torchvision ``TwoMLPHead``: flatten each RoI, then num_fc x (Dense + ReLU).

    Args:
        num_fc: number of fully connected layers (2 = torchvision ``fc6``, ``fc7``).
        fc_dim: their width D (1024).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, R, P, P, C] RoI features (P, C known).
    Returns:
        [B, R, D] in the compute dtype.

    Sub-layers: ``fcs[i]`` (torchvision ``fc{6 + i}``). ``pooled_shape`` = (P, P, C) after build:
    the converter needs it to permute fc6's rows from torch's (C, P, P) flatten order.
    """

    def __init__(self, num_fc=2, fc_dim=1024, **kwargs):
        super().__init__(**kwargs)
        if int(num_fc) < 1:
            raise ValueError(f"num_fc must be >= 1, got {num_fc}")
        self.num_fc = int(num_fc)
        self.fc_dim = int(fc_dim)
        init = keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="uniform")
        self.fcs = [keras.layers.Dense(self.fc_dim, activation="relu", kernel_initializer=init,
                                       bias_initializer="zeros", name=f"fc{6 + i}",
                                       dtype=self.dtype_policy)
                    for i in range(self.num_fc)]
        self.pooled_shape = None

    def build(self, input_shape):
        _require_known(input_shape, (2, 3, 4), self.name)
        self.pooled_shape = tuple(int(d) for d in input_shape[2:])
        in_dim = self.pooled_shape[0] * self.pooled_shape[1] * self.pooled_shape[2]
        for fc in self.fcs:
            fc.build((None, None, in_dim))
            in_dim = self.fc_dim
        self.built = True

    def call(self, inputs):
        ph, pw, c = self.pooled_shape
        x = tf.reshape(inputs, tf.concat([tf.shape(inputs)[:2], [ph * pw * c]], 0))
        x = tf.ensure_shape(x, inputs.shape[:2].as_list() + [ph * pw * c])  # [B, R, P*P*C]
        for fc in self.fcs:
            x = fc(x)
        return x  # [B, R, D]

    def get_config(self):
        config = super().get_config()
        config.update({"num_fc": self.num_fc, "fc_dim": self.fc_dim})
        return config


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class BoxPredictor(keras.layers.Layer):
    """torchvision ``FastRCNNPredictor``: class logits and per-class box deltas.

    Args:
        num_classes: K, including background (index 0).
        class_agnostic: True predicts one box per RoI ([..., 1, 4]) instead of K.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, R, D] box-head features (any leading dims).
    Returns:
        dict ``class_logits`` [B, R, K] and ``box_deltas`` [B, R, K, 4] (or [B, R, 1, 4] when
        class-agnostic), float32; ``box_deltas[..., k, c]`` is torchvision's ``bbox_pred``
        output unit k * 4 + c.

    Sub-layers: ``cls_score`` and ``bbox_pred`` (torchvision names).
    """

    def __init__(self, num_classes, class_agnostic=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.class_agnostic = bool(class_agnostic)
        self.num_box_classes = 1 if self.class_agnostic else self.num_classes
        self.cls_score = keras.layers.Dense(
            self.num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            bias_initializer="zeros", name="cls_score", dtype=self.dtype_policy)
        self.bbox_pred = keras.layers.Dense(
            4 * self.num_box_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            bias_initializer="zeros", name="bbox_pred", dtype=self.dtype_policy)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the feature axis must be known, got {input_shape}")
        self.cls_score.build(input_shape)
        self.bbox_pred.build(input_shape)
        self.built = True

    def call(self, inputs):
        class_logits = tf.cast(self.cls_score(inputs), tf.float32)  # [B, R, K]
        deltas = tf.cast(self.bbox_pred(inputs), tf.float32)  # [B, R, K' * 4]
        box_deltas = tf.reshape(
            deltas, tf.concat([tf.shape(deltas)[:-1], [self.num_box_classes, 4]], 0))
        box_deltas = tf.ensure_shape(  # [B, R, K', 4], unit k * 4 + c -> [k, c]
            box_deltas, deltas.shape[:-1].as_list() + [self.num_box_classes, 4])
        return {"class_logits": class_logits, "box_deltas": box_deltas}

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "class_agnostic": self.class_agnostic})
        return config


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskHead(_ConvStack):
    """torchvision ``MaskRCNNHeads``: num_convs x (3x3 conv, padding = dilation, + ReLU).

    Args:
        num_convs: number of convs (4; 0 makes the head the identity).
        conv_dim: their output channels D (256).
        dilation: conv dilation (1 in torchvision's Mask R-CNN).
        inference_chunk: RoIs per pass at inference (``_map_in_chunks``); None (default) =
            all at once.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, R, P, P, C] (C known; B, R, P may be unknown).
    Returns:
        [B, R, P, P, D] in the compute dtype.

    Sub-layers: ``convs[i]`` named ``mask_fcn{i + 1}`` (torchvision ``mask_head.{i}.0``, before
    0.13 ``mask_head.mask_fcn{i + 1}``).
    """

    _conv_name = "mask_fcn"

    def __init__(self, num_convs=4, conv_dim=256, dilation=1, inference_chunk=None, **kwargs):
        super().__init__(num_convs, conv_dim, dilation, inference_chunk, **kwargs)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class KeypointHead(_ConvStack):
    """torchvision ``KeypointRCNNHeads``: num_convs x (3x3 conv, padding 1, + ReLU).

    Args:
        num_convs: number of convs (8).
        conv_dim: their output channels D (512).
        inference_chunk: RoIs per pass at inference (``_map_in_chunks``); None (default) =
            all at once.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, R, P, P, C] (C known).
    Returns:
        [B, R, P, P, D] in the compute dtype.

    Sub-layers: ``convs[i]`` named ``conv_fcn{i + 1}`` (torchvision ``keypoint_head.{2 * i}``).
    """

    _conv_name = "conv_fcn"

    def __init__(self, num_convs=8, conv_dim=512, inference_chunk=None, **kwargs):
        kwargs.pop("dilation", None)  # fixed at 1, as torchvision
        super().__init__(num_convs, conv_dim, 1, inference_chunk, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("dilation")
        return config


def _conv_transpose(channels, kernel_size, activation, name, dtype):
    return keras.layers.Conv2DTranspose(
        channels, kernel_size, strides=2, padding="valid", activation=activation,
        kernel_initializer=_kaiming_normal_fan_out(), bias_initializer="zeros", name=name,
        dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskPredictor(keras.layers.Layer):
    """torchvision ``MaskRCNNPredictor``: 2x2 stride-2 transposed conv + ReLU, 1x1 conv to K.

    Args:
        num_classes: K mask channels (1 = class-agnostic masks).
        conv_dim: channels of the transposed conv (torchvision ``dim_reduced``, 256).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, R, P, P, C] mask-head features.
    Returns:
        [B, R, 2P, 2P, K] float32 mask logits (S = 2P = 28).

    Sub-layers: ``conv5_mask`` and ``mask_fcn_logits`` (torchvision names).
    """

    def __init__(self, num_classes, conv_dim=256, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.conv_dim = int(conv_dim)
        self.conv5_mask = _conv_transpose(self.conv_dim, 2, "relu", "conv5_mask",
                                          self.dtype_policy)
        self.mask_fcn_logits = keras.layers.Conv2D(
            self.num_classes, 1, kernel_initializer=_kaiming_normal_fan_out(),
            bias_initializer="zeros", name="mask_fcn_logits", dtype=self.dtype_policy)

    def build(self, input_shape):
        _require_known(input_shape, (4,), self.name)
        self.conv5_mask.build((None, None, None, input_shape[-1]))
        self.mask_fcn_logits.build((None, None, None, self.conv_dim))
        self.built = True

    def call(self, inputs):
        return _apply_to_rois(self._masks, inputs)  # [B, R, 2P, 2P, K]

    def _masks(self, x):
        x = self.conv5_mask(x)  # [B * R, 2P, 2P, conv_dim]; kernel 2 = stride: no overlap
        return tf.cast(self.mask_fcn_logits(x), tf.float32)  # [B * R, 2P, 2P, K]

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "conv_dim": self.conv_dim})
        return config


def upsample_bilinear_2x(x):
    """torch ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``, NHWC.

    Args:
        x: [N, H, W, C] float.
    Returns:
        [N, 2H, 2W, C] float32; output pixel d reads source (d + 0.5) / 2 - 0.5 (half-pixel
        centres), clamped to the map, linearly interpolated.
    """
    x = tf.cast(x, tf.float32)  # resize computes in float32 anyway
    h, w = x.shape[1], x.shape[2]
    size = [2 * h, 2 * w] if h is not None and w is not None else 2 * tf.shape(x)[1:3]
    return tf.image.resize(x, size, method="bilinear", antialias=False)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class KeypointPredictor(keras.layers.Layer):
    """torchvision ``KeypointRCNNPredictor``: 4x4 stride-2 transposed conv (padding 1), 2x up.

    Args:
        num_keypoints: Kp heatmaps (17 for COCO persons).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, R, P, P, C] keypoint-head features.
    Returns:
        [B, R, 4P, 4P, Kp] float32 heatmap logits (S = 4P = 56): the transposed conv gives
        2P x 2P (torch padding 1 = "valid" output (2P + 2) cropped by 1 on every side), then
        ``upsample_bilinear_2x``. No ReLU (torchvision has none).

    Sub-layers: ``kps_score_lowres`` (torchvision name).
    """

    _padding = 1  # torch ConvTranspose2d(padding=deconv_kernel // 2 - 1)

    def __init__(self, num_keypoints, **kwargs):
        super().__init__(**kwargs)
        self.num_keypoints = int(num_keypoints)
        self.kps_score_lowres = _conv_transpose(self.num_keypoints, 4, None,
                                                "kps_score_lowres", self.dtype_policy)

    def build(self, input_shape):
        _require_known(input_shape, (4,), self.name)
        self.kps_score_lowres.build((None, None, None, input_shape[-1]))
        self.built = True

    def call(self, inputs):
        return _apply_to_rois(self._heatmaps, inputs)  # [B, R, 4P, 4P, Kp]

    def _heatmaps(self, x):
        x = self.kps_score_lowres(x)  # [B * R, 2P + 2, 2P + 2, Kp] ("valid")
        p = self._padding
        x = x[:, p:-p, p:-p, :]  # [B * R, 2P, 2P, Kp], torch's padding=1
        return upsample_bilinear_2x(x)  # [B * R, 4P, 4P, Kp] float32

    def get_config(self):
        config = super().get_config()
        config.update({"num_keypoints": self.num_keypoints})
        return config
