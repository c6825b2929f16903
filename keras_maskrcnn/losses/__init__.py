"""Training losses as pure functions of batched, padded tensors: ``common`` (smooth L1,
normalisers), ``rcnn`` (RPN, Fast R-CNN box head, mask and keypoint heads), ``yolact`` (class
with hard negatives, box, prototype mask and semantic segmentation losses)."""
from keras_maskrcnn.losses.common import global_count, smooth_l1
from keras_maskrcnn.losses.rcnn import fastrcnn_losses, keypoint_loss, mask_loss, rpn_losses
from keras_maskrcnn.losses.yolact import (yolact_box_loss, yolact_class_loss, yolact_mask_loss,
                                          yolact_semantic_loss)

__all__ = ["global_count", "smooth_l1", "rpn_losses", "fastrcnn_losses", "mask_loss", "keypoint_loss",
           "yolact_class_loss", "yolact_box_loss", "yolact_mask_loss", "yolact_semantic_loss"]
