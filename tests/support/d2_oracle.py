"""A detectron2 oracle built from torchvision pieces (detectron2 cannot be installed here), its
weights written as a detectron2 model-zoo ``.pkl``.

Facts of detectron2's inference reproduced (from its modeling/ sources, see
keras_maskrcnn/convert/detectron2_zoo.py):
    * input BGR 0-255 minus the BGR mean, divided by the BGR std (torchvision's transform with
      those numbers, fed BGR pixels); the photos are given at the test size, so both resizes
      are the identity; padding to 32 (FPN) or none (C4, ``size_divisible=1``);
    * MSRA ResNet: the stride of the first block of res3..res5 on the 1x1 conv (set on
      torchvision's blocks), FrozenBatchNorm eps 1e-5; ResNeXt-101 32x8d keeps it on the 3x3;
    * anchors not rounded, at nominal strides 2**l (``UnroundedAnchors``), size-major in the
      file (the oracle's RPN channels, torchvision's ratio-major, are permuted when written);
    * proposals of width and height > 0 kept (min_size = the smallest normal float32);
    * RoIAlign aligned with adaptive sampling (``torchvision.ops.roi_align(sampling_ratio=0,
      aligned=True)``) on the level floor(4 + log2(sqrt(area) / 224 + 1e-8)) (``D2Pooler``);
    * detections: softmax, per-class boxes clipped, score > threshold, per-class NMS, top 100,
      no minimum box size (``d2_postprocess_detections``);
    * masks pasted as detectron2 (support.d2_masks), keypoints decoded as detectron2
      (support.d2_keypoints);
    * C4 (``build_c4_oracle``): torchvision's layer1..layer3 as the one-level backbone, RPN
      with 5 sizes x 3 ratios, 14x14 pooling at 1/16, the box head = layer4 + mean, the mask
      head = the same layer4 + MaskRCNNPredictor(2048, 256, K) (14x14 masks).
Written out by ``support.d2_layout.to_detectron2`` (background last, foreground-only box and
mask rows).
"""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import MultiScaleRoIAlign, boxes as box_ops, roi_align
from torchvision.ops.misc import FrozenBatchNorm2d

PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
MSRA_STD, C2_STD = (1.0, 1.0, 1.0), (57.375, 57.120, 58.395)
SIZES, RATIOS = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)


class UnroundedAnchors(AnchorGenerator):
    """detectron2's DefaultAnchorGenerator: corners not rounded, stride 2**l per level."""

    def __init__(self, sizes, aspect_ratios, strides):
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(strides)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device="cpu"):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)  # ratio-major, as torchvision
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2  # no .round()

    def forward(self, image_list, feature_maps):
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, dtype=torch.int64)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, feature_maps[0].device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


class D2Pooler(MultiScaleRoIAlign):
    """detectron2's ROIPooler with ROIAlignV2 (aligned, sampling_ratio 0) and its level rule
    (a MultiScaleRoIAlign only for torchvision's type checks: ``forward`` is its own)."""

    def __init__(self, names, output_size, scales, min_level=2):
        super().__init__(list(names), output_size, 0)
        self.names, self.side, self.scales = list(names), output_size, list(scales)
        self.min_level = min_level

    def forward(self, features, boxes, image_shapes=None):
        x = [features[n] for n in self.names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1)
                          for i, b in enumerate(boxes)])  # (R, 5) batch index, xyxy
        def align(feature, r, scale):
            return roi_align(feature, r, self.side, spatial_scale=scale,
                             sampling_ratio=0, aligned=True)
        if len(x) == 1:
            return align(x[0], rois, self.scales[0])
        sizes = torch.sqrt(box_ops.box_area(rois[:, 1:]))
        levels = torch.floor(4 + torch.log2(sizes / 224 + 1e-8))
        levels = levels.clamp(self.min_level, self.min_level + len(x) - 1).long() - self.min_level
        out = rois.new_zeros((len(rois), x[0].shape[1], self.side, self.side))
        for level, (feature, scale) in enumerate(zip(x, self.scales)):
            index = torch.where(levels == level)[0]
            out[index] = align(feature, rois[index], scale)
        return out


def d2_postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
    """detectron2's fast_rcnn_inference on torchvision's RoIHeads (bound as its method)."""
    num_classes = class_logits.shape[-1]
    pred_boxes = self.box_coder.decode(box_regression, proposals).split(
        [len(p) for p in proposals])
    pred_scores = F.softmax(class_logits, -1).split([len(p) for p in proposals])
    all_boxes, all_scores, all_labels = [], [], []
    for boxes, scores, shape in zip(pred_boxes, pred_scores, image_shapes):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)
        labels = torch.arange(1, num_classes).view(1, -1).expand_as(scores[:, 1:]).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]  # no minimum box size
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)
        keep = keep[: self.detections_per_img]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels


def msra_strides_(resnet):
    """The stride of the first block of layer2..layer4 onto its 1x1 conv (MSRA ResNet)."""
    for layer in (resnet.layer2, resnet.layer3, resnet.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)


def _d2_settings(model, std, size_divisible, min_size, max_size):
    model.transform = GeneralizedRCNNTransform(min_size, max_size, list(PIXEL_MEAN_BGR),
                                               list(std), size_divisible=size_divisible)
    model.rpn.min_size = float(torch.finfo(torch.float32).tiny)  # keeps w > 0 and h > 0
    heads = model.roi_heads
    heads.postprocess_detections = d2_postprocess_detections.__get__(heads)
    return model


def build_fpn_oracle(kind, num_classes, min_size, max_size, score_threshold,
                     backbone="resnet50"):
    """torchvision Faster / Mask / Keypoint R-CNN (``kind``) configured the detectron2 way."""
    body = resnet_fpn_backbone(backbone_name=backbone, weights=None,
                               norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    msra = not backbone.startswith("resnext")
    if msra:
        msra_strides_(body.body)
    anchors = UnroundedAnchors(tuple((s,) for s in SIZES), (RATIOS,) * 5, (4, 8, 16, 32, 64))
    names = ["0", "1", "2", "3"]
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    cls = {"faster": FasterRCNN, "mask": MaskRCNN, "keypoint": KeypointRCNN}[kind]
    kwargs = dict(rpn_anchor_generator=anchors, box_roi_pool=D2Pooler(names, 7, scales),
                  box_score_thresh=score_threshold, rpn_pre_nms_top_n_test=1000,
                  rpn_post_nms_top_n_test=1000)
    if kind == "mask":
        kwargs["mask_roi_pool"] = D2Pooler(names, 14, scales)
    if kind == "keypoint":
        kwargs["keypoint_roi_pool"] = D2Pooler(names, 14, scales)
    model = cls(body, num_classes=num_classes, **kwargs).eval()
    return _d2_settings(model, MSRA_STD if msra else C2_STD, 32, min_size, max_size)


class C4Backbone(nn.Module):
    """torchvision ResNet layer1..layer3: {"0": C4 (stride 16, 1024 channels)}."""

    def __init__(self, resnet):
        super().__init__()
        self.body = IntermediateLayerGetter(resnet, {"layer3": "0"})
        self.out_channels = 1024

    def forward(self, x):
        return self.body(x)


class Res5(nn.Module):
    """layer4 on pooled RoIs; ``mean`` averages it for the box predictor."""

    def __init__(self, layer4, mean):
        super().__init__()
        self.layer4, self.mean = layer4, mean

    def forward(self, x):
        x = self.layer4(x)
        return x.mean(dim=(2, 3)) if self.mean else x


def build_c4_oracle(num_classes, min_size, max_size, score_threshold, mask=True):
    """detectron2's R50-C4 Mask R-CNN (Res5ROIHeads) from torchvision parts."""
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    msra_strides_(resnet)
    anchors = UnroundedAnchors((SIZES,), (RATIOS,), (16,))
    pooler = D2Pooler(["0"], 14, [1 / 16])
    kwargs = dict(rpn_anchor_generator=anchors,
                  rpn_head=torchvision.models.detection.rpn.RPNHead(1024, 15),
                  rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=1000,
                  box_roi_pool=pooler, box_head=Res5(resnet.layer4, mean=True),
                  box_predictor=FastRCNNPredictor(2048, num_classes),
                  box_score_thresh=score_threshold)
    if mask:
        kwargs.update(mask_roi_pool=pooler, mask_head=Res5(resnet.layer4, mean=False),
                      mask_predictor=MaskRCNNPredictor(2048, 256, num_classes))
    model = (MaskRCNN if mask else FasterRCNN)(C4Backbone(resnet), **kwargs).eval()
    return _d2_settings(model, MSRA_STD, 1, min_size, max_size)


def res5_bn_hooks(model, seed):
    """C4: forward pre-hooks that set each res5 FrozenBatchNorm from the statistics of its
    input the first time it runs, perturbed (the recipe of tests/integration/test_parity.py's
    backbone: mean + 0.3 std N(0, 1), var x U(0.5, 2), weight +-U(0.5, 1.5), x 0.3 and bias
    N(0, 0.09) on a block's last BN); remove the handles after one forward."""
    head = getattr(model.roi_heads.box_head, "layer4", None)
    if head is None:
        return []
    g = torch.Generator().manual_seed(seed)

    def hook_for(name):
        def hook(module, args):
            if getattr(module, "_calibrated", False):
                return
            x = args[0]
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3)) + 1e-3
            c, gain = mean.numel(), 0.3 if name.endswith("bn3") else 1.0
            module.running_mean.copy_(mean + 0.3 * var.sqrt() * torch.randn(c, generator=g))
            module.running_var.copy_(var * (0.5 + 1.5 * torch.rand(c, generator=g)))
            sign = torch.sign(torch.randn(c, generator=g))
            module.weight.copy_(gain * (0.5 + torch.rand(c, generator=g)) * sign)
            module.bias.copy_(torch.randn(c, generator=g) * 0.3 * gain)
            module._calibrated = True
        return hook

    return [m.register_forward_pre_hook(hook_for(name)) for name, m in head.named_modules()
            if isinstance(m, FrozenBatchNorm2d)]
