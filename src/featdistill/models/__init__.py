"""featdistill.models: the model zoo and its registry.

``build_model(name, num_classes, in_channels, image_size, **kwargs)`` builds any registered model; every zoo
model returns logits only and names its features (``stage_paths``, ``embedding_path``, ``classifier_path``)
so taps can address them by module path. Importing this package registers every model below.
"""

from . import convnet, dense, detr, forecast, mlp, mobilenetv2, resnet, shufflenet, vgg, vit, wrn  # noqa: F401  (registration)
from .convnet import ConvNet
from .mlp import MLP
from .mobilenetv2 import MobileNetV2
from .profile import count_macs, count_parameters, latency_per_image
from .registry import MODELS, build_model, list_models, register_model
from .resnet import CifarResNet
from .shufflenet import ShuffleNetV1, ShuffleNetV2
from .vgg import VGG
from .vit import VisionTransformer, mask_to_keep_idx
from .wrn import WideResNet

__all__ = [
    "MODELS",
    "MLP",
    "VGG",
    "CifarResNet",
    "ConvNet",
    "MobileNetV2",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "VisionTransformer",
    "WideResNet",
    "build_model",
    "count_macs",
    "count_parameters",
    "latency_per_image",
    "list_models",
    "mask_to_keep_idx",
    "register_model",
]
