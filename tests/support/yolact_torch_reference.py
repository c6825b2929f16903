"""A torch oracle of the reference YOLACT (Bolya et al. 2019; dbolya/yolact with
``yolact_base_config`` / ``yolact_resnet50_config``) for tests/convert/test_convert_yolact.py.

Written from the facts of issue 12 and the reference's structure: its module names (the
state_dict has the reference checkpoint's keys: ``backbone.conv1``, ``backbone.layers.{i}.{b}``,
``fpn.lat_layers`` / ``pred_layers`` / ``downsample_layers``, ``proto_net.{0..10}``,
``prediction_layers.0.upfeature.0`` / ``bbox_layer`` / ``conf_layer`` / ``mask_layer``,
``semantic_seg_conv``), its eval forward and its ``Detect`` (Fast NMS) + ``postprocess``:
- Input: an RGB uint8 photo taken as BGR floats (the reference reads with cv2), bilinear resize
  (half-pixel, no antialias) to size x size, (x - mean) / std with BGR mean (103.94, 116.78,
  123.68) / std (57.38, 57.12, 58.40), then channels reversed to RGB.
- ResNet (torchvision Bottleneck: stride on the 3x3, BatchNorm eps 1e-5) -> C3, C4, C5; FPN:
  1x1 laterals, top-down bilinear to the lateral's size, 3x3 pred convs + ReLU, P6 / P7 by
  stride-2 3x3 convs on the previous output, no ReLU.
- Protonet on P3: (conv 3x3 + ReLU) x 3, bilinear x2 (+ ReLU), conv 3x3 + ReLU, conv 1x1 to k,
  then ReLU; prototypes (B, Hp, Wp, k).
- Shared head on P3..P7: conv 3x3 + ReLU, then 3x3 bbox (A * 4), conf (A * K), mask (A * k,
  tanh), each ``permute(0, 2, 3, 1).reshape(B, -1, C)``.
- Priors: (cx, cy) = ((j + 0.5) / W, (i + 0.5) / H), row-major, then ratio; square side
  s * sqrt(r) / 550 (relative); decode with variances (0.1, 0.2).
- Detect: softmax; keep anchors whose best foreground score > 0.05; per class the top 200,
  IoU upper triangle (diagonal excluded), keep max IoU <= 0.5; top 100 over all classes.
- postprocess: masks = sigmoid(proto @ coef), cropped with 1-pixel padding at prototype
  resolution, bilinear to the image, > 0.5; boxes x image size, clamped, truncated to int.

Shape shorthand: B batch, S input side, N anchors, K classes incl. background, k prototypes,
A anchors per location, n detections, H0 x W0 original image.
"""
from itertools import product
from math import sqrt

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

MEAN_BGR = (103.94, 116.78, 123.68)
STD_BGR = (57.38, 57.12, 58.40)
SCALES = (24, 48, 96, 192, 384)
RATIOS = (1, 1 / 2, 2)
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ResNetBackbone(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layers = nn.ModuleList()
        inplanes = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))
            layer = [Bottleneck(inplanes, planes, stride, downsample)]
            layer += [Bottleneck(planes * 4, planes) for _ in range(count - 1)]
            self.layers.append(nn.Sequential(*layer))
            inplanes = planes * 4

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs  # C2..C5


class FPN(nn.Module):
    def __init__(self, in_channels=(512, 1024, 2048), channels=256, num_downsample=2):
        super().__init__()
        self.lat_layers = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in reversed(in_channels)])
        self.pred_layers = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1)
                                          for _ in in_channels])
        self.downsample_layers = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1,
                                                          stride=2)
                                                for _ in range(num_downsample)])

    def forward(self, convouts):
        out = list(convouts)
        x = 0
        for i, lat in enumerate(self.lat_layers):  # i = 0 acts on the coarsest input
            j = len(convouts) - 1 - i
            if i > 0:
                x = F.interpolate(x, size=convouts[j].shape[-2:], mode="bilinear",
                                  align_corners=False)
            x = x + lat(convouts[j])
            out[j] = x
        for i, pred in enumerate(self.pred_layers):
            j = len(convouts) - 1 - i
            out[j] = F.relu(pred(out[j]))
        for down in self.downsample_layers:
            out.append(down(out[-1]))
        return out  # P3..P7


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def proto_net(num_prototypes, channels=256):
    """The reference's make_net(mask_proto_net, include_last_relu=False): indices 0, 2, 4, 8,
    10 are convs, 6 the x2 upsample, the others ReLUs."""
    return nn.Sequential(
        nn.Conv2d(channels, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        Upsample(), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, num_prototypes, 1))


class PredictionModule(nn.Module):
    def __init__(self, num_classes, num_prototypes, num_anchors=3, channels=256):
        super().__init__()
        self.num_classes, self.num_prototypes = num_classes, num_prototypes
        self.upfeature = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.bbox_layer = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    def forward(self, x):
        x = self.upfeature(x)
        b = x.shape[0]

        def flat(y, c):
            return y.permute(0, 2, 3, 1).reshape(b, -1, c)  # (B, H * W * A, c)
        return (flat(self.bbox_layer(x), 4), flat(self.conf_layer(x), self.num_classes),
                torch.tanh(flat(self.mask_layer(x), self.num_prototypes)))


class YolactReference(nn.Module):
    """The reference's module tree and eval forward (raw outputs; ``detect`` post-processes)."""

    def __init__(self, depth=50, num_classes=81, num_prototypes=32):
        super().__init__()
        self.backbone = ResNetBackbone(BLOCKS[depth])
        self.fpn = FPN()
        self.proto_net = proto_net(num_prototypes)
        self.prediction_layers = nn.ModuleList([PredictionModule(num_classes, num_prototypes)])
        self.semantic_seg_conv = nn.Conv2d(256, num_classes - 1, 1)

    def features(self, x):
        return self.fpn(self.backbone(x)[1:])  # P3..P7

    @torch.no_grad()
    def forward(self, x):
        """x: (B, 3, S, S) normalised RGB -> dict of raw outputs (see ``detect``)."""
        levels = self.features(x)
        proto = F.relu(self.proto_net(levels[0])).permute(0, 2, 3, 1)  # (B, Hp, Wp, k)
        head = self.prediction_layers[0]
        loc, conf, coef = (torch.cat(t, 1) for t in zip(*[head(p) for p in levels]))
        priors = torch.cat([make_priors(p.shape[2], p.shape[3], s)
                            for p, s in zip(levels, SCALES)])
        return {"loc": loc, "conf_logits": conf, "conf": F.softmax(conf, -1), "coef": coef,
                "proto": proto, "priors": priors}


def make_priors(conv_h, conv_w, scale, max_size=550):
    """(H * W * A, 4) relative (cx, cy, w, h), square anchors (the released v1 weights)."""
    data = []
    for j, i in product(range(conv_h), range(conv_w)):
        x, y = (i + 0.5) / conv_w, (j + 0.5) / conv_h
        for ratio in RATIOS:
            w = scale * sqrt(ratio) / max_size
            data += [x, y, w, w]
    return torch.tensor(data, dtype=torch.float32).view(-1, 4)


def preprocess(image, size):
    """(H0, W0, 3) uint8 RGB -> (1, 3, S, S) as the reference's FastBaseTransform."""
    x = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).float()[None]  # BGR
    x = F.interpolate(x.permute(0, 3, 1, 2), (size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(MEAN_BGR).view(1, 3, 1, 1)
    std = torch.tensor(STD_BGR).view(1, 3, 1, 1)
    return ((x - mean) / std)[:, [2, 1, 0]].contiguous()  # to RGB


def decode(loc, priors):
    """(N, 4) deltas, (N, 4) priors -> (N, 4) relative xyxy (variances 0.1, 0.2)."""
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * 0.2)), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def jaccard(a, b):
    """(C, n, 4), (C, m, 4) -> (C, n, m) IoU."""
    max_xy = torch.min(a[:, :, None, 2:], b[:, None, :, 2:])
    min_xy = torch.max(a[:, :, None, :2], b[:, None, :, :2])
    inter = torch.clamp(max_xy - min_xy, min=0).prod(-1)
    area_a = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]))[:, :, None]
    area_b = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))[:, None, :]
    return inter / (area_a + area_b - inter)


def fast_nms(boxes, coefs, scores, iou_threshold=0.5, top_k=200, max_detections=100):
    """scores (K - 1, N') -> boxes (n, 4), coefs (n, k), classes (n,) 0-based fg, scores (n,)."""
    scores, idx = scores.sort(1, descending=True)
    idx, scores = idx[:, :top_k], scores[:, :top_k]
    num_classes, num_dets = idx.shape
    boxes = boxes[idx.reshape(-1)].view(num_classes, num_dets, 4)
    coefs = coefs[idx.reshape(-1)].view(num_classes, num_dets, -1)
    iou = jaccard(boxes, boxes).triu_(diagonal=1)
    keep = iou.max(dim=1)[0] <= iou_threshold  # (C, D)
    classes = torch.arange(num_classes)[:, None].expand_as(keep)[keep]
    boxes, coefs, scores = boxes[keep], coefs[keep], scores[keep]
    scores, idx = scores.sort(0, descending=True)
    idx, scores = idx[:max_detections], scores[:max_detections]
    return boxes[idx], coefs[idx], classes[idx], scores


def sanitize_coordinates(x1, x2, size, padding=0):
    x1, x2 = x1 * size, x2 * size
    lo, hi = torch.min(x1, x2), torch.max(x1, x2)
    return torch.clamp(lo - padding, min=0), torch.clamp(hi + padding, max=size)


def crop(masks, boxes, padding=1):
    """masks (Hp, Wp, n) zeroed outside each relative box (+ padding prototype pixels)."""
    h, w, n = masks.shape
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    rows = torch.arange(h, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    return masks * inside.float()


@torch.no_grad()
def detect(outputs, image_hw, score_threshold=0.05, iou_threshold=0.5, top_k=200,
           max_detections=100, batch_index=0):
    """Detect + postprocess of one image of ``forward``'s outputs.

    Returns a dict of numpy arrays: boxes (n, 4) int64 original pixels (the reference's
    ``.long()``), boxes_float (n, 4) before the truncation, scores (n,), labels (n,) contiguous
    1..K-1, masks (n, H0, W0) bool, mask_probs (n, Hp, Wp) cropped probabilities.
    """
    height, width = image_hw
    b = batch_index
    boxes = decode(outputs["loc"][b], outputs["priors"])
    class_scores = outputs["conf"][b, :, 1:].t()  # (K - 1, N)
    keep = class_scores.max(0)[0] > score_threshold
    boxes, coefs, classes, scores = fast_nms(boxes[keep], outputs["coef"][b][keep],
                                             class_scores[:, keep], iou_threshold, top_k,
                                             max_detections)
    masks = torch.sigmoid(outputs["proto"][b] @ coefs.t())  # (Hp, Wp, n)
    masks = crop(masks, boxes).permute(2, 0, 1).contiguous()  # (n, Hp, Wp)
    full = F.interpolate(masks[None], (height, width), mode="bilinear",
                         align_corners=False)[0] > 0.5  # (n, H0, W0)
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], width)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], height)
    pixels = torch.stack([x1, y1, x2, y2], 1)
    return {"boxes": pixels.long().numpy(), "boxes_float": pixels.numpy(),
            "scores": scores.numpy(), "labels": (classes + 1).numpy(), "masks": full.numpy(),
            "mask_probs": masks.numpy()}


def standardise_(layer, outputs, std, mean):
    """Rescales a conv in place so its outputs (R, C) get per-channel ``std`` and ``mean``."""
    scale = std / (outputs.std(0) + 1e-6)  # (C,)
    layer.weight.mul_(scale.view(-1, 1, 1, 1))
    layer.bias.copy_((layer.bias - outputs.mean(0)) * scale + mean)


def randomised(depth, num_classes, num_prototypes, images, seed=0):
    """A seeded ``YolactReference`` in eval mode whose activations stay O(1) on ``images``.

    Every bias ~ N(0, 0.1); each backbone BatchNorm takes its input's per-channel statistics
    (perturbed) and a random affine map (x 0.3 on a bottleneck's last BN: the residual stream
    keeps its scale); the last proto conv gives N(0, 1) before the ReLU, the coefficients
    N(0, 1) before tanh, the class logits N(N(0, 1), 3^2) per channel (peaky, varied labels),
    the box deltas N(0, 0.5^2).
    """
    torch.manual_seed(seed)
    model = YolactReference(depth, num_classes, num_prototypes).eval()
    g = torch.Generator().manual_seed(seed)

    def normal(n, std):
        return torch.randn(n, generator=g) * std

    def calibrate(name):
        def hook(module, args):
            x = args[0]
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3)) + 1e-3
            c = mean.numel()
            gain = 0.3 if name.endswith("bn3") else 1.0
            module.running_mean.copy_(mean + 0.3 * var.sqrt() * normal(c, 1.0))
            module.running_var.copy_(var * (0.5 + 1.5 * torch.rand(c, generator=g)))
            module.weight.copy_(gain * (0.5 + torch.rand(c, generator=g))
                                * torch.sign(normal(c, 1.0)))
            module.bias.copy_(normal(c, 0.3 * gain))
        return hook

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        hooks = [m.register_forward_pre_hook(calibrate(n))
                 for n, m in model.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)]
        levels = model.features(images)
        for h in hooks:
            h.remove()
        levels = model.features(images)  # with the final statistics
        protos = model.proto_net[:-1](levels[0])
        last = model.proto_net[-1]
        standardise_(last, _rows(last(protos)), 1.0, 0.0)
        head = model.prediction_layers[0]
        hidden = [head.upfeature(p) for p in levels]
        conf_means = normal(head.conf_layer.out_channels, 1.0)
        for layer, std, mean in ((head.conf_layer, 3.0, conf_means), (head.bbox_layer, 0.5, 0.0),
                                 (head.mask_layer, 1.0, 0.0)):
            standardise_(layer, torch.cat([_rows(layer(h)) for h in hidden]), std, mean)
    return model


def _rows(x):
    """(B, C, H, W) -> (B * H * W, C)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])

