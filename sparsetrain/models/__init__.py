"""Model factories: any timm or torchvision classifier, plus small nets registered in timm's registry."""

from sparsetrain.models.factory import BUILTIN_MODELS, build_model

__all__ = ["BUILTIN_MODELS", "build_model"]
