"""Weight import: ``from_torchvision(checkpoint, arch)`` and the per-part loaders."""


def from_torchvision(checkpoint, arch, overrides=()):
    """See ``keras_maskrcnn.convert.torchvision_models.from_torchvision``."""
    from keras_maskrcnn.convert.torchvision_models import from_torchvision as convert
    return convert(checkpoint, arch, overrides=overrides)
