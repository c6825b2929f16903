"""The res5 stage as a per-RoI head: Mask R-CNN's ResNet-C4 variant (He et al. 2017, section 3,
"Network Architecture", and Figure 4, left; Faster R-CNN's ResNet design of Ren et al. 2015 /
He et al. 2016: RoIs pooled from C4 go through the 5th stage, "conv5", of the ResNet).

Conventions pinned here (tests/models/test_c4.py checks the head against torchvision's
``resnet50().layer4`` applied to the same pooled RoIs):
- The blocks are ``models.backbones.make_stage(5, ...)``: the same ``ResNetBlock`` s, names
  (``res5_{j}``) and settings (depth, width_multiplier, ResNeXt groups / width_per_group,
  stride_in_1x1, bn_eps) as the backbone's res5 would have; the first block has stride 2 and
  a projection shortcut. detectron2's ``roi_heads.res5.{j}.conv{k}(.norm)`` /
  ``.shortcut(.norm)`` are ``blocks[j].conv{k}`` / ``bn{k}`` / ``shortcut_conv`` /
  ``shortcut_bn`` (torchvision's ``layer4.{j}.conv{k}`` / ``bn{k}`` / ``downsample.{0,1}``).
- Freezing follows the backbone's ``freeze_at`` (detectron2's convention, 5 = everything
  frozen): the head is frozen when ``freeze_at >= 5``. Its BatchNorms are frozen always.
- The head is shared by the box and mask paths of the C4 detector (``MaskRCNN`` with a
  ``roi_feature_head``): one set of weights, applied to each path's RoIs.

Shape shorthand: B batch, R RoIs per image, P pooled RoI size (14), C input channels (C4's,
1024 at full width), C5 = 2048 at full width (planes 512 x expansion 4).
"""
import keras

from keras_maskrcnn.layers.heads import _apply_to_rois
from keras_maskrcnn.models.backbones import FreezeAtLayer, make_stage, stage_channels


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Res5Head(FreezeAtLayer):
    """ResNet's res5 stage applied to each RoI: [B, R, P, P, C] -> [B, R, P / 2, P / 2, C5].

    Args:
        depth, width_multiplier, groups, width_per_group, stride_in_1x1, bn_eps: as
            ``models.backbones.ResNet`` (take the backbone's values: the stage is the one
            the backbone leaves out with ``max_level=4``).
        freeze_at: the backbone's ``freeze_at``; >= 5 freezes this head too.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        inputs: [B, R, P, P, C] RoI features (C known; B, R may be unknown or 0).
    Returns:
        [B, R, ceil(P / 2), ceil(P / 2), C5] in the compute dtype.

    Sub-layers: ``blocks`` = [res5_0, res5_1, ...] (``ResNetBlock``, 3 for ResNet-50/101).
    ``out_channels`` = C5 (the box predictor's input after the mean over the RoI).
    """

    _frozen_parts = "blocks"  # a frozen head stays frozen when set trainable, as ResNet's stages

    def __init__(self, depth=50, width_multiplier=1.0, groups=1, width_per_group=64,
                 stride_in_1x1=False, bn_eps=1e-5, freeze_at=2, **kwargs):
        super().__init__(**kwargs)
        self.depth, self.width_multiplier = depth, float(width_multiplier)
        self.groups, self.width_per_group = int(groups), int(width_per_group)
        self.stride_in_1x1, self.bn_eps = bool(stride_in_1x1), float(bn_eps)
        self.freeze_at = int(freeze_at)
        settings = dict(depth=depth, width_multiplier=self.width_multiplier,
                        groups=self.groups, width_per_group=self.width_per_group,
                        stride_in_1x1=self.stride_in_1x1, bn_eps=self.bn_eps)
        self.in_channels = stage_channels(4, depth, self.width_multiplier)  # C4's
        self.blocks, self.out_channels = make_stage(5, self.in_channels, **settings)
        self._apply_freeze_at()

    def _apply_freeze_at(self):
        if self.freeze_at >= 5:
            keras.layers.Layer.trainable.fset(self, False)

    def build(self, input_shape):
        if len(input_shape) != 5 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: expected [B, R, P, P, C] with known C, got "
                             f"{input_shape}")
        if input_shape[-1] != self.in_channels:
            raise ValueError(f"{self.name}: expected C4 features with {self.in_channels} "
                             f"channels, got {input_shape[-1]}")
        channels = self.in_channels
        for block in self.blocks:
            block.build((None, None, None, channels))
            channels = block.compute_output_shape((None, None, None, channels))[-1]
        self.built = True

    def call(self, inputs, training=None):
        # the heads' RoI folding, with its guard for no RoI at all (oneDNN's empty batch)
        return _apply_to_rois(lambda x: self._stage(x, training), inputs)

    def _stage(self, x, training):
        for block in self.blocks:
            x = block(x, training=training)  # [B * R, P', P', C'] after each block
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"depth": self.depth, "width_multiplier": self.width_multiplier,
                       "groups": self.groups, "width_per_group": self.width_per_group,
                       "stride_in_1x1": self.stride_in_1x1, "bn_eps": self.bn_eps,
                       "freeze_at": self.freeze_at})
        return config
