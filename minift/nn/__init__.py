"""Layers and the Module system (``from minift import nn``), named as in ``torch.nn``.

Read in this order: module.py (Module, Parameter) -> init.py -> layers.py -> containers.py ->
conv.py -> attention.py.
"""

from minift.nn import init
from minift.nn.attention import MultiHeadAttention
from minift.nn.containers import ModuleDict, ModuleList, Sequential
from minift.nn.conv import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d
from minift.nn.layers import (
    GELU,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    LayerNorm,
    Linear,
    ReLU,
    RMSNorm,
    SiLU,
    Tanh,
)
from minift.nn.module import IncompatibleKeys, Module, Parameter

__all__ = [
    "GELU",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Embedding",
    "Flatten",
    "Identity",
    "IncompatibleKeys",
    "LayerNorm",
    "Linear",
    "MaxPool2d",
    "Module",
    "ModuleDict",
    "ModuleList",
    "MultiHeadAttention",
    "Parameter",
    "RMSNorm",
    "ReLU",
    "Sequential",
    "SiLU",
    "Tanh",
    "init",
]
