"""Differentiable ops, one ``Function`` per op (``import minift.functional as F``)."""

from minift.functional.basic import (
    abs, add, div, exp, linear, log, matmul, max, mean, mul, neg, pow, sigmoid, sqrt, sub,
    sum, tanh, var,
)
from minift.functional.shape import permute, reshape, transpose
from minift.functional.shape import (cat, concatenate, embedding, expand, flatten, gather, index, masked_fill, split, squeeze, stack, unsqueeze, where)
from minift.functional.activation import dropout, gelu, log_softmax, relu, silu, softmax
