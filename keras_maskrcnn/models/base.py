"""Keras plumbing shared by every detector (Mask R-CNN, YOLACT): losses, fit, saving, detect.

A detector subclass shows only its method: ``call`` (training outputs carry predictions,
targets and weights; inference outputs are padded detections) and ``compute_losses``
(training outputs -> {loss name: unweighted scalar}). This base adds what Keras needs around
that, none of it specific to one architecture:
    * one loss tracker per loss name, and ``compute_loss`` = the weighted sum, each loss
      scaled back to the global batch for its tracker under a tf.distribute strategy;
    * ``compute_metrics`` / ``test_step`` (validation loss = the training forward pass);
    * ``compile`` builds the optimizer's slots, ``_maybe_symbolic_build`` skips Keras'
      pre-``fit`` build (two Keras bugs under MultiWorkerMirroredStrategy);
    * ``build_with_dummy_batch`` / ``build_from_config`` create every weight;
    * ``detect`` (``keras_maskrcnn.inference``) with the model's ``preprocessor`` and
      ``postprocessor`` (``keras_maskrcnn.postprocessing``: every setting of the mapping of
      outputs to results, category ids and names included);
    * ``get_config`` keeps the recipe the builders made the model from (``config_dict``,
      the model and input config sections), ``category_ids`` and ``category_names``;
      ``from_config`` rebuilds through the function ``keras_maskrcnn.builders`` registers
      here (``register_builder``), so this package never imports the builders;
    * ``is_multi_worker``, the strategy test ``compute_metrics`` needs (``training``
      re-exports it: the models import nothing above them, ``bench/import_layers.py``).

Shape shorthand: B batch; Hp, Wp padded input size.
"""
import dataclasses

import keras
import tensorflow as tf

from keras_maskrcnn import inference

_BUILDERS = {}  # class name -> build(config_dict, category_ids, **keras_args) -> unbuilt model


def register_builder(class_name, build):
    """Registers ``build(config_dict, category_ids, **keras_args)`` as the way to rebuild
    ``class_name`` (``keras_args``: the saved ``keras.Model`` arguments, e.g. its name)."""
    _BUILDERS[class_name] = build


def is_multi_worker(strategy):
    """True for a strategy that spans more than one worker process (``compute_metrics``; the
    training job asks it too, as ``training.is_multi_worker``)."""
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


class Detector(keras.Model):
    """Base of the detectors: the Keras machinery around ``call`` and ``compute_losses``.

    Args:
        loss_names: the names ``compute_losses`` returns, in its order.
        loss_weights: {loss name: float} (a name left out weighs 1.0).
        preprocessor: ``keras_maskrcnn.preprocessing.Preprocessor``: the model normalises
            with it; ``detect`` and the export resize, pad and map back with it.
        postprocessor: ``keras_maskrcnn.postprocessing.Postprocessor``, the mapping of the
            inference outputs to results (``detect``, evaluation, exports); its ``mask_kind``
            is the class's ``mask_type`` (or None: no masks). A part like the others: the
            models never import ``postprocessing`` (it sits above them, with the builders).
        config_dict: the recipe ``keras_maskrcnn.builders`` made the model from (only kept
            for ``get_config``; the model never reads it).
    """

    mask_type = "box"  # the kind of masks the inference outputs carry (subclasses)

    #: True while ``export.image_graph.portable`` traces the ONNX / LiteRT graph: the model
    #: then uses only ops those runtimes have (e.g. unrolled keypoint decoding).
    portable = False

    def __init__(self, loss_names, loss_weights, preprocessor, postprocessor, config_dict=None,
                 **kwargs):
        if postprocessor is None or postprocessor.mask_kind not in (self.mask_type, None):
            raise ValueError(f"{type(self).__name__} needs a postprocessor with mask_kind "
                             f"{self.mask_type!r} or None, got {postprocessor!r}")
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.config_dict = config_dict
        self.loss_term_weights = {name: float(loss_weights.get(name, 1.0))
                                  for name in loss_names}
        self.loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss")
                              for name in loss_names}
        self.total_loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def category_ids(self):
        """Dataset category id of each contiguous class 1..K-1 (a list), or None = identity:
        the postprocessor's; setting it (None included) replaces the postprocessor's ids."""
        ids = self.postprocessor.category_ids
        return None if ids is None else list(ids)

    @category_ids.setter
    def category_ids(self, ids):
        self.postprocessor = dataclasses.replace(self.postprocessor, category_ids=ids)
        self._drop_detect_fn()

    @property
    def category_names(self):
        """Name of each contiguous class 1..K-1 (a list), or None: the postprocessor's;
        setting it (None included) replaces the postprocessor's names."""
        names = self.postprocessor.category_names
        return None if names is None else list(names)

    @category_names.setter
    def category_names(self, names):
        self.postprocessor = dataclasses.replace(self.postprocessor, category_names=names)

    def _drop_detect_fn(self):
        """Forgets ``detect``'s traced function (it holds the previous postprocessor)."""
        if getattr(self, "_detect_fn", None) is not None:
            self._detect_fn = None

    def compute_losses(self, outputs):
        """Training outputs -> {loss name: scalar} (unweighted); the subclass's method."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- training
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Weighted sum of the losses of a training forward pass (``y_pred``); tracks each.

        Under a strategy this replica's share of the global-batch loss (see the subclass's
        ``compute_losses``); the trackers show the global-batch value.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        total = 0.0
        for name, value in self.compute_losses(y_pred).items():
            self.loss_trackers[name].update_state(value * replicas)
            total = total + self.loss_term_weights[name] * value
        self.total_loss_tracker.update_state(total * replicas)
        return total

    def test_step(self, data):
        """Validation loss: the training forward pass (targets need it), without updates."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True)
        self.compute_loss(x=x, y_pred=y_pred, training=False)
        return self.compute_metrics(x, None, y_pred)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The loss trackers' values: {name: scalar}, or shape [1] under a multi-worker strategy.

        Keras 3 ``fit`` reduces step results under MultiWorkerMirroredStrategy with
        ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars (keras-team/keras
        #20329); a [1] value is reduced to a scalar there, so the logs stay scalars.
        """
        results = {m.name: m.result() for m in self.metrics}
        if is_multi_worker(tf.distribute.get_strategy()):
            results = {k: tf.reshape(v, [1]) for k, v in results.items()}
        return results

    @property
    def metrics(self):
        return [self.total_loss_tracker, *self.loss_trackers.values()]

    def compile(self, *args, **kwargs):
        """Keras' ``compile``; then, when every layer is built, the optimizer's slots too.

        Keras otherwise creates them inside the first traced train step, and a tf.function
        whose first trace creates variables is traced a second time and keeps both graphs
        and their kernels (slower first step, more resident memory). The slots follow
        ``trainable_variables`` at this call: freeze or unfreeze layers before ``compile``
        (Keras asks for a new ``compile`` after such a change anyway).
        """
        super().compile(*args, **kwargs)
        if self.optimizer is not None and all(layer.built for layer in self._flatten_layers()):
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras' pre-``fit`` symbolic build once the optimizer is built.

        Keras (3.15) otherwise takes a batch from the distributed dataset and averages it over
        the replicas with ``strategy.reduce`` first, which fails under
        MultiWorkerMirroredStrategy for a dict of images and GT (keras-team/keras#20585).
        Its symbolic build is an inference pass, which ``build_with_dummy_batch`` already did
        before the optimizer could be built on the weights (``compile`` builds it then, or
        ``run.build_training_model`` when a layer was left unbuilt).
        """
        if self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # ---------------------------------------------------------------------------- building
    def build(self, input_shape=None):
        """Sub-layers build on the first call (their input shapes depend on the parts)."""
        self.built = True

    def get_build_config(self):
        return {"dummy_batch": True}

    def build_from_config(self, config):
        """Loading a ``.keras`` file: create every weight before they are read."""
        self.build_with_dummy_batch()

    def build_with_dummy_batch(self, size=64):
        """Creates every weight: one inference pass on a zero (1, size, size, 3) batch."""
        self({"images": tf.zeros((1, size, size, 3)),
              "image_sizes": tf.constant([[size, size]], tf.int32)}, training=False)

    # --------------------------------------------------------------------------- inference
    def detect(self, images):
        """Detections for a list of HxWx3 uint8 images; see ``keras_maskrcnn.inference``."""
        return inference.detect(self, images)

    # ----------------------------------------------------------------------------- saving
    def get_config(self):
        config = super().get_config()
        config.update({"config": self.config_dict, "category_ids": self.category_ids,
                       "category_names": self.category_names})
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuilds the model (unbuilt) from its recipe through the registered builder."""
        build = _BUILDERS.get(cls.__name__)
        if build is None:
            raise ValueError(f"no builder registered for {cls.__name__}: import "
                             "keras_maskrcnn.builders (or use keras_maskrcnn.build_model / "
                             f"keras_maskrcnn.{cls.__name__}) before loading the model")
        config = dict(config)
        names = config.pop("category_names", None)
        model = build(config.pop("config"), config.pop("category_ids", None), **config)
        if names is not None:
            model.category_names = names
        return model
