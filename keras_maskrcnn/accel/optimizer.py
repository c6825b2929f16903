"""Optimizer hook: in a graph, each variable is updated as soon as its own gradient exists.

Not a step of the method (``keras_maskrcnn.accel``): the update arithmetic and its order per
variable are Keras'; only when each update may run changes, which lowers the peak memory of a
training step. ``training.SGD`` and ``training.AdamW`` mix it in (registered names
``keras_maskrcnn>SGD`` / ``keras_maskrcnn>AdamW``, so saved ``.keras`` files keep loading).
"""
import tensorflow as tf


class UpdateAfterGradient:
    """Optimizer mixin: in a graph, each variable is updated as soon as its gradient exists.

    TensorFlow's executor runs an op as soon as its inputs are ready. With Keras' (3.15, TF
    backend) graph of the update that has three consequences for the peak memory of a
    training step (the first measured in the BFC allocator's trace of a Mask R-CNN R50-FPN
    step at 512x768, the others read off the graph; tests/accel/test_accel_optimizer.py;
    bench/README.md):
        * the parts of an update that read only the optimizer's slots (SGD's
          ``momentum * m``) are ready from the start: they ran during the forward pass and
          each held a copy of its variable's size until the gradient arrived;
        * every gradient passes through one all-reduce, an identity over all of them even
          with a single replica: no update starts before the last gradient, so all gradients
          are alive together at the end of the step, and all updates' temporaries with them;
        * weight decay (``variable -= variable * wd * lr``) is applied before the updates and
          read only the variable: it ran early in the step, while the forward pass' read of
          the variable was still held for the backward pass, and TensorFlow copies a
          variable assigned while a read of it is alive: one more copy of every weight.
    Here the all-reduce is skipped with a single replica (a sum over one replica), and the
    weight decay and the update of a variable both wait for that variable's gradient, so
    each variable is updated during the backward pass and its gradient freed. The arithmetic
    and its order per variable (decay, then update) are Keras'.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync == 1:
            return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)

    def _apply_weight_decay(self, variables):
        """No-op: ``update_step`` applies the decay of each variable after its gradient."""

    def update_step(self, gradient, variable, learning_rate):
        ready = [] if tf.executing_eagerly() else tf.nest.flatten(gradient,
                                                                   expand_composites=True)
        with tf.control_dependencies(ready):
            if self.weight_decay is not None and self._use_weight_decay(variable):
                lr = tf.cast(learning_rate, variable.dtype)
                wd = tf.cast(self.weight_decay, variable.dtype)
                variable.assign_sub(variable * wd * lr)
            return super().update_step(gradient, variable, learning_rate)
