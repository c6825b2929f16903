"""Training losses as pure functions of batched, padded tensors: ``common`` (smooth L1,
normalisers), ``rcnn`` (RPN, Fast R-CNN box head, mask and keypoint heads)."""
from keras_maskrcnn.losses.common import smooth_l1
from keras_maskrcnn.losses.rcnn import fastrcnn_losses, keypoint_loss, mask_loss, rpn_losses

__all__ = ["smooth_l1", "rpn_losses", "fastrcnn_losses", "mask_loss", "keypoint_loss"]
