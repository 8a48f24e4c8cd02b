"""Differentiable ops, one ``Function`` per op (``import minift.functional as F``)."""

from minift.functional.basic import (
    abs, add, div, exp, linear, log, matmul, max, mean, mul, neg, pow, sigmoid, sqrt, sub,
    sum, tanh, var,
)
from minift.functional.shape import permute, reshape, transpose
