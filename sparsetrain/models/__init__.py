"""Model factories: any timm or torchvision classifier, plus small nets for 28-32 px data.

Importing this package registers the built-ins (`BUILTIN_MODELS`) in timm's registry, so
`timm.create_model("resnet20", num_classes=10, in_chans=1)` works afterwards.
"""

from sparsetrain.models.factory import BUILTIN_MODELS, build_from_arch, build_model

__all__ = ["BUILTIN_MODELS", "build_from_arch", "build_model"]
