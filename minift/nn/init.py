"""Weight initialisers, with PyTorch's names and formulas (``torch.nn.init``).

Each one draws from the tensor's own backend generator (``backend.uniform`` / ``normal``), so
``minift.manual_seed(s)`` makes initialisation reproducible bit for bit, and writes the values
into ``tensor.data`` in place: raw-array writes record no graph, and Parameter identity is kept.
Meta tensors have no values, so on them an initialiser only checks its arguments.

Kaiming (He et al. 2015, https://arxiv.org/abs/1502.01852) keeps the forward variance at
gain^2 / fan: std = gain / sqrt(fan), bound = sqrt(3) std for a uniform. Xavier (Glorot and
Bengio 2010) balances both directions: std = gain sqrt(2 / (fan_in + fan_out)).
"""

from __future__ import annotations

import math

from minift.tensor import Tensor

_LINEAR_GAINS = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain that keeps a layer's output variance at 1 after ``nonlinearity`` (PyTorch's)."""
    if nonlinearity in _LINEAR_GAINS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field.

    A Linear weight (out, in) has fan_in = in; a Conv2d weight (out, in/groups, kh, kw) has
    fan_in = in/groups * kh * kw.
    """
    if tensor.ndim < 2:
        raise ValueError(
            f"fan in and fan out need a tensor with at least 2 axes, got shape {tensor.shape}"
        )
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _write(tensor: Tensor, array) -> Tensor:
    if tensor.backend.name != "meta":
        tensor.data[...] = array
    return tensor


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill with U(a, b)."""
    return _write(tensor, tensor.backend.uniform(tensor.shape, a, b, dtype=tensor.dtype))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with N(mean, std^2)."""
    return _write(tensor, tensor.backend.normal(tensor.shape, mean, std, dtype=tensor.dtype))


def zeros_(tensor: Tensor) -> Tensor:
    return _write(tensor, 0)


def ones_(tensor: Tensor) -> Tensor:
    return _write(tensor, 1)


def constant_(tensor: Tensor, value: float) -> Tensor:
    return _write(tensor, value)


def kaiming_uniform_(
    tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Tensor:
    """U(-bound, bound) with bound = gain * sqrt(3 / fan).

    With PyTorch's layer default a = sqrt(5): gain = sqrt(2 / (1 + 5)) so bound = 1 / sqrt(fan_in).
    """
    gain = calculate_gain(nonlinearity, a)
    bound = gain * math.sqrt(3.0 / _fan(tensor, mode))
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(
    tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """U(-bound, bound) with bound = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def trunc_normal_(
    tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
) -> Tensor:
    """N(mean, std^2) restricted to [a, b] (absolute bounds, as in PyTorch), by rejection.

    Entries outside [a, b] are redrawn until none is left; each round keeps a fraction P(a <= x
    <= b) of them, so an interval holding less than 1e-4 of the mass is refused.
    """
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    mass = math.erf((b - mean) / (std * math.sqrt(2))) - math.erf((a - mean) / (std * math.sqrt(2)))
    if mass / 2 < 1e-4:  # P(a <= x <= b) = (erf(b') - erf(a')) / 2
        raise ValueError(f"trunc_normal_: [{a}, {b}] holds too little of N({mean}, {std}^2)")
    if tensor.backend.name == "meta":
        return tensor
    backend = tensor.backend
    values = backend.normal(tensor.shape, mean, std, dtype=tensor.dtype)
    outside = (values < a) | (values > b)
    while outside.any():
        values[outside] = backend.normal((int(outside.sum()),), mean, std, dtype=tensor.dtype)
        outside = (values < a) | (values > b)
    return _write(tensor, values)


def linear_default_(weight: Tensor, bias: Tensor | None) -> None:
    """PyTorch's default for Linear and Conv: W ~ kaiming_uniform(a=sqrt(5)), b ~ U(+-1/sqrt(fan_in)).

    With a = sqrt(5) the gain is sqrt(2 / 6), so W's bound sqrt(3) * gain / sqrt(fan_in) is
    1/sqrt(fan_in) too: every entry of W and b is uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)].
    """
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)
