"""Pieces every detector's losses share: smooth L1 (Fast R-CNN, Girshick 2015, section 2.3)
and the count normaliser of a masked sum.

Conventions pinned here (tests/losses/test_losses.py):
    * Smooth L1 is ``torch.nn.functional.smooth_l1_loss``: 0.5 x^2 / beta for |x| < beta,
      |x| - 0.5 beta otherwise; beta = 0 is plain L1 (Fast R-CNN's is beta = 1; torchvision
      uses 1/9 for the RPN and the box head, YOLACT 1).
    * A normaliser is a count, local by default or summed over the replicas when given.
"""
import tensorflow as tf


def smooth_l1(x, beta=1.0 / 9):
    """Elementwise smooth L1 (Huber divided by beta) of a difference ``x = input - target``.

    Args:
        x: (...) float tensor, the regression residual.
        beta: Python float >= 0, the transition point; 0 gives |x|.

    Returns:
        (...) float tensor (x's dtype): ``0.5 * x**2 / beta`` where ``|x| < beta``, else
        ``|x| - 0.5 * beta``; equal to ``torch.nn.functional.smooth_l1_loss(input, target,
        beta=beta, reduction="none")``.
    """
    x = tf.convert_to_tensor(x)
    n = tf.abs(x)
    beta = float(beta)
    if beta == 0.0:  # L1; avoids 0 / 0 in the quadratic branch
        return n
    return tf.where(n < beta, 0.5 * n * n / beta, n - 0.5 * beta)


def normaliser(count, local_count):
    """float32 scalar normaliser: ``count`` if given (a global count), else the local one."""
    if count is None:
        count = local_count
    return tf.cast(count, tf.float32)


def masked_sum(values, mask):
    """Sum of ``values`` where ``mask`` (broadcastable) is True, as float32 scalar."""
    mask = tf.broadcast_to(mask, tf.shape(values))
    return tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))


def global_count(mask):
    """Number of True entries of ``mask`` summed over all replicas (float32, at least 1): the
    count summed over all replicas that a loss's ``num_*`` argument takes."""
    count = tf.reduce_sum(tf.cast(mask, tf.float32))
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return tf.maximum(count, 1.0)
