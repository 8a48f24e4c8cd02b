"""Convolutional layers: Conv2d, BatchNorm2d and pooling, on NCHW tensors as in PyTorch.

Conv2d holds a weight (out, in/groups, kh, kw) and calls ``F.conv2d`` (im2col + one matmul).
BatchNorm2d normalises each channel with the batch statistics in training and with running
averages (buffers, saved in the state dict) in evaluation (Ioffe and Szegedy 2015,
https://arxiv.org/abs/1502.03167).
"""

from __future__ import annotations

from typing import Any

from minift import functional as F
from minift.nn import init
from minift.nn.module import Module, new_parameter
from minift.tensor import Tensor, ones, zeros

IntPair = int | tuple[int, int]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_nchw(x: Tensor, channels: int | None, layer: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer} expects {channels} channels, got input of shape {x.shape}")


class Conv2d(Module):
    """2-D convolution (cross-correlation, as in PyTorch) over an (N, C, H, W) input.

    Init: W ~ kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and
    b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with fan_in = in_channels / groups * kh * kw.
    Output (N, out_channels, H_out, W_out), H_out = (H + 2 pad - dil (kh - 1) - 1) // stride + 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        dtype: Any = None,
        backend: Any = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must both be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = new_parameter(shape, dtype, backend)
        if bias:
            self.bias = new_parameter((out_channels,), dtype, backend)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.linear_default_(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        _check_nchw(x, self.in_channels, "Conv2d")
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + ("" if self.bias is not None else ", bias=False")


class BatchNorm2d(Module):
    """y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c per channel c of (N, C, H, W).

    Training: batch statistics over (N, H, W); the running buffers move as
    r <- (1 - momentum) r + momentum * batch stat (unbiased variance), and ``num_batches_tracked``
    counts the batches (``momentum=None`` gives the cumulative average 1/num_batches_tracked).
    Evaluation: the running statistics. Init: weight = 1, bias = 0, running_mean = 0,
    running_var = 1.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: Any = None,
        backend: Any = None,
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = init.ones_(new_parameter((num_features,), dtype, backend))
            self.bias = init.zeros_(new_parameter((num_features,), dtype, backend))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=dtype, backend=backend))
            self.register_buffer("running_var", ones(num_features, dtype=dtype, backend=backend))
            self.register_buffer("num_batches_tracked", Tensor(0, backend=backend, dtype="int64"))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x: Tensor) -> Tensor:
        _check_nchw(x, self.num_features, "BatchNorm2d")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1  # a 0-d array, updated in place
            if self.momentum is None:
                factor = 1.0 / int(self.num_batches_tracked.item())
        # evaluation without running statistics falls back to the batch statistics (PyTorch)
        use_batch = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=use_batch,
            momentum=factor,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class MaxPool2d(Module):
    """Maximum over each kernel window; ``stride`` defaults to ``kernel_size``."""

    def __init__(
        self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
    ) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = kernel_size if stride is None else stride

    def forward(self, x: Tensor) -> Tensor:
        _check_nchw(x, None, "MaxPool2d")
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    """Mean over each kernel window (padding zeros are counted, as PyTorch's default)."""

    def forward(self, x: Tensor) -> Tensor:
        _check_nchw(x, None, "AvgPool2d")
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Global average pooling: (N, C, H, W) -> (N, C, 1, 1). Only output_size 1 is supported."""

    def __init__(self, output_size: IntPair = 1) -> None:
        super().__init__()
        if _pair(output_size, "output_size") != (1, 1):
            raise ValueError(f"AdaptiveAvgPool2d supports output_size 1 only, got {output_size!r}")
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        _check_nchw(x, None, "AdaptiveAvgPool2d")
        return F.mean(x, axis=(2, 3), keepdims=True)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
