"""Weight import: ``torchvision`` (per-part loaders, ``load_state_dict``),
``torchvision_models`` (whole models: ``from_torchvision(checkpoint, arch)``), ``yolact`` (the
reference YOLACT checkpoints: ``from_yolact(checkpoint)``) and ``pth`` (torch checkpoints read
without torch)."""
