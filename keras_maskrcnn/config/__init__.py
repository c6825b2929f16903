"""Configuration: frozen dataclasses, read in one place (``keras_maskrcnn.builders``), loaded
strictly from YAML.

Not a paper section. ``schema`` holds the sections, readable as the hyper-parameter tables of
Mask R-CNN / FPN / Faster R-CNN (defaults: torchvision ``maskrcnn_resnet50_fpn`` and the paper,
1x COCO schedule); ``fields`` the field declarations, type coercion and validation rules;
``loading`` the YAML reader, overrides, suggestions and writer; ``packaged`` the configs
shipped in the package, loadable by name. Import-light on purpose: yaml and
the standard library only, no TensorFlow.
"""
from .fields import ConfigError
from .loading import (add_override_argument, apply_overrides, config_from_dict,
                      config_to_dict, config_to_yaml, load_config, save_config)
from .packaged import list_configs, resolve_config
from .schema import (ACCEL_MODES, ARCHITECTURES, AnchorConfig, BackboneConfig, BoxHeadConfig,
                     Config, DataConfig, DataSplitConfig, EvalConfig, ExportConfig, FPNConfig,
                     InputConfig, KeypointHeadConfig, LossWeightsConfig, MaskHeadConfig,
                     ModelConfig, RESIZE_POLICIES, RoIAlignConfig, RoIHeadsConfig, RPNConfig,
                     SyntheticConfig, TrainConfig, YolactConfig)

__all__ = [
    "ConfigError", "Config", "ModelConfig", "BackboneConfig", "FPNConfig", "AnchorConfig",
    "RPNConfig", "RoIAlignConfig", "RoIHeadsConfig", "BoxHeadConfig", "MaskHeadConfig",
    "KeypointHeadConfig", "LossWeightsConfig", "InputConfig", "DataSplitConfig",
    "SyntheticConfig", "DataConfig", "TrainConfig", "EvalConfig", "ExportConfig",
    "YolactConfig", "ARCHITECTURES", "ACCEL_MODES", "RESIZE_POLICIES",
    "load_config", "config_from_dict", "config_to_dict", "config_to_yaml", "save_config",
    "apply_overrides", "add_override_argument", "list_configs", "resolve_config",
]
