"""Weight import: ``torchvision`` (per-part loaders, ``load_state_dict``) and
``torchvision_models`` (whole models: ``from_torchvision(checkpoint, arch)``)."""
