"""Weight import and loading: ``state_dict`` (the toolkit: checked all-or-nothing reads, layout
transforms, progress), ``unpickler`` (the one restricted unpickler), ``pth`` (torch checkpoints
read without torch), ``torchvision`` (per-part loaders) and ``torchvision_models`` (whole models:
``from_torchvision(checkpoint, arch)``), ``yolact`` (``from_yolact``), ``detectron2``
(``from_detectron2``), and ``weights`` (initial-weight loading for the jobs, fine-tuning to
another class count)."""
