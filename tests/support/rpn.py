"""torchvision's RPN on random FPN-like maps: the oracle of the RPN head, proposal and anchor
target tests (a padded batch of two 256x320 images whose unpadded sizes differ)."""
import collections

import numpy as np
import tensorflow as tf

from keras_maskrcnn.ops import anchors as anchor_ops

PADDED = (256, 320)
IMAGE_SIZES = np.array([[256, 320], [230, 300]], np.int32)
CHANNELS = 16
NUM_ANCHORS = 3
LEVELS = ("P2", "P3", "P4", "P5", "P6")
CACHE = {}


def rpn_setup(torch, torchvision, conv_depth=1):
    """torchvision head/anchors/RPN + inputs, cached per conv_depth (module lifetime)."""
    if conv_depth in CACHE:
        return CACHE[conv_depth]
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import (AnchorGenerator, RegionProposalNetwork,
                                                  RPNHead as TorchRPNHead,
                                                  concat_box_prediction_layers)
    torch.manual_seed(conv_depth)
    head = TorchRPNHead(CHANNELS, NUM_ANCHORS, conv_depth=conv_depth)
    with torch.no_grad():  # spread logits and deltas (the std-0.01 init gives ~0)
        for p in head.parameters():
            p.normal_(0.0, 0.2)
    sizes = anchor_ops.fpn_feature_sizes(*PADDED)
    feats = collections.OrderedDict(
        (name, torch.randn(2, CHANNELS, h, w)) for name, (h, w) in zip(LEVELS, sizes))
    generator = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(2, 3, *PADDED), [tuple(s) for s in IMAGE_SIZES.tolist()])
    with torch.no_grad():
        logits, deltas = head(list(feats.values()))
        anchors = generator(images, list(feats.values()))
        counts = [int(o[0].numel()) for o in logits]
        logits, deltas = concat_box_prediction_layers(logits, deltas)
    setup = dict(
        head=head, generator=generator, images=images, feats=feats, counts=counts,
        torch_anchors=anchors, torch_logits=logits.reshape(2, -1), torch_deltas=deltas,
        logits=logits.reshape(2, -1).numpy(), deltas=deltas.reshape(2, -1, 4).numpy(),
        anchors=anchors[0].numpy(),
        tf_feats={k: tf.constant(v.permute(0, 2, 3, 1).numpy()) for k, v in feats.items()},
        make_rpn=lambda pre, post, score=0.0: RegionProposalNetwork(
            generator, head, 0.7, 0.3, 256, 0.5, pre, post, 0.7, score_thresh=score),
    )
    CACHE[conv_depth] = setup
    return setup


def box_iou(a, b):
    """numpy (n, 4) x (m, 4) IoU."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)
