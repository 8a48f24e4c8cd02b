"""LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685), rsLoRA and DoRA.

    h = W x + s · B A x,    A (r, k), B (d, r),    s = alpha / r   (rsLoRA: alpha / sqrt(r))

W stays frozen; only A and B train: r (d + k) parameters instead of d k. B starts at zero, so
the adapted model starts equal to the base. rsLoRA (Kalajdzievski 2023) scales by
alpha / sqrt(r), which keeps the update's size stable as r grows. DoRA (Liu et al. 2024,
https://arxiv.org/abs/2402.09353) splits the adapted weight into a direction and a learned
magnitude per output unit:

    W' = m · (W + s B A) / ||W + s B A||_row,     m initialised to ||W||_row

with the norm treated as a constant in backward (the paper's section 4.3, and PEFT): r (d + k)
+ d parameters. An Embedding (V, d) trains r (V + d), a Conv2d (O, C, kh, kw) r (C kh kw + O).
Walk-through and PEFT parity: docs/peft/lora.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from minift import functional as F
from minift import nn
from minift.functional.cuda_ops import LoraLinearKernel, kernels_for
from minift.nn.module import new_parameter
from minift.peft.base import AdapterLayer, ModulesToSave, PeftConfig
from minift.peft.files import register
from minift.tensor import Tensor


@register
@dataclass
class LoraConfig(PeftConfig):
    """PEFT's LoraConfig fields. ``init_lora_weights``: True (A Kaiming-uniform, B zero) or
    "gaussian" (A ~ N(0, 1/r)). ``rank_pattern``/``alpha_pattern``: {name or regex: value}
    overriding r / lora_alpha for the modules whose path ends with a match. ``bias``: "none",
    "all" (every bias in the model trains) or "lora_only" (the adapted layers' biases)."""

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    peft_type: ClassVar[str] = "LORA"

    def __post_init__(self) -> None:
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(
                f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}"
            )
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError("init_lora_weights must be True, False or 'gaussian'")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def rank_and_alpha(self, path: str) -> tuple[int, float]:
        return (
            _pattern_value(self.rank_pattern, path, self.r),
            _pattern_value(self.alpha_pattern, path, self.lora_alpha),
        )

    def scaling(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def trainable_extras(self, model: nn.Module) -> dict[str, Tensor]:
        """The biases that train beside A and B (``bias`` = "all" or "lora_only")."""
        if self.bias == "none":
            return {}
        found = {}
        saved = [p for p, m in model.named_modules() if isinstance(m, ModulesToSave)]
        for path, module in model.named_modules():
            if self.bias == "lora_only" and not isinstance(module, LoraLayer):
                continue
            if any(path.startswith(f"{p}.") for p in saved):
                continue  # a modules_to_save copy trains whole; its original stays frozen
            owner = module.base_layer if isinstance(module, LoraLayer) else module
            bias = getattr(owner, "bias", None)
            if isinstance(bias, nn.Parameter):
                prefix = f"{path}.base_layer" if isinstance(module, LoraLayer) else path
                found[f"{prefix}.bias" if prefix else "bias"] = bias
        return found


def _pattern_value(patterns: dict, path: str, default: Any) -> Any:
    """PEFT's rule: the first key k with re.match(rf"(.*\\.)?({k})$", path); the group keeps
    an alternation such as "q_proj|v_proj" whole."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


class _Weight(nn.Module):
    """A holder for one bare Parameter (PEFT keeps these in ParameterDicts)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight


class LoraLayer(AdapterLayer):
    """Shared bookkeeping: rank, scaling and dropout per adapter."""

    def _setup(self, name: str, config: LoraConfig, path: str) -> int:
        r, alpha = config.rank_and_alpha(path)
        self.scale = {**getattr(self, "scale", {}), name: config.scaling(r, alpha)}
        self.dropout_p = {**getattr(self, "dropout_p", {}), name: config.lora_dropout}
        return r

    @classmethod
    def validate(cls, base_layer: nn.Module, config: LoraConfig, path: str) -> None:
        r, _ = config.rank_and_alpha(path)
        limit = min(base_layer.weight.shape[0], math.prod(base_layer.weight.shape[1:]))
        if not isinstance(r, int) or not 1 <= r <= limit:
            raise ValueError(
                f"LoRA rank r={r} for {path} must be an integer in [1, {limit}] (the layer's "
                f"weight is {tuple(base_layer.weight.shape)})"
            )
        if config.use_dora and not isinstance(base_layer, nn.Linear):
            raise ValueError(
                f"DoRA is implemented for Linear layers; {path} is {type(base_layer).__name__}"
            )

    def _dropout(self, x: Tensor, name: str) -> Tensor:
        return F.dropout(x, self.dropout_p[name], training=self.training)


class LoraLinear(LoraLayer):
    """y = base(x) + s · B(A(dropout(x))), or DoRA's magnitude-scaled version."""

    adapter_attrs = ("lora_A", "lora_B", "lora_magnitude_vector")
    bare_attrs = ("lora_magnitude_vector",)

    def update_layer(self, name: str, config: LoraConfig, path: str) -> None:
        r = self._setup(name, config, path)
        base = self.base_layer
        dtype, backend = base.weight.dtype, base.weight.backend
        a = nn.Linear(base.in_features, r, False, dtype, backend)
        b = nn.Linear(r, base.out_features, False, dtype, backend)
        if config.init_lora_weights == "gaussian":
            nn.init.normal_(a.weight, 0.0, 1.0 / r)
        nn.init.zeros_(b.weight)
        if config.init_lora_weights is False:  # PEFT's "no-op off": B random too (for tests)
            nn.init.kaiming_uniform_(b.weight, a=math.sqrt(5))
        self.lora_A[name], self.lora_B[name] = a, b
        if config.use_dora:
            magnitude = new_parameter((base.out_features,), dtype, backend)
            if backend.name != "meta":  # shapes only there (counting): nothing to compute
                magnitude.data = self._weight_norm(base.weight.data + self._lora_weight(name))
            self.lora_magnitude_vector[name] = _Weight(magnitude)

    def _lora_weight(self, name: str) -> Any:
        """s · B A as a raw array (out, in)."""
        mm = self.base_layer.weight.backend.matmul
        return mm(self.lora_B[name].weight.data, self.lora_A[name].weight.data) * self.scale[name]

    @staticmethod
    def _weight_norm(weight: Any) -> Any:
        return (weight * weight).sum(axis=1) ** 0.5  # one norm per output row

    def delta_weight(self, name: str) -> Any:
        delta = self._lora_weight(name)
        if name in self.lora_magnitude_vector:
            w = self.base_layer.weight.data + delta
            m = self.lora_magnitude_vector[name].weight.data
            return (m / self._weight_norm(w))[:, None] * w - self.base_layer.weight.data
        return delta

    def _fused_forward(self, x: Tensor, name: str) -> Tensor | None:
        """x W^T + b + s (x A^T) B^T as one kernel op, where the backend has CUDA kernels.

        Only plain LoRA on a float Linear with no active dropout qualifies (DoRA, 4-bit bases
        and dropout keep the composed path); None means "compose".
        """
        base = self.base_layer
        if type(base) is not nn.Linear or (self.training and self.dropout_p[name] > 0):
            return None
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        bias = base.bias.data if base.bias is not None else None
        if kernels_for(x.backend, x.data, base.weight.data, bias, a.data, b.data) is None:
            return None
        return LoraLinearKernel.apply(x, base.weight, base.bias, a, b, scale=self.scale[name])

    def adapted_forward(self, x: Tensor, name: str) -> Tensor:
        base = self.base_layer
        if name not in self.lora_magnitude_vector:
            fused = self._fused_forward(x, name)
            if fused is not None:
                return fused
        h, out = self._dropout(x, name), base(x)
        lora = self.lora_B[name](self.lora_A[name](h))
        if name not in self.lora_magnitude_vector:
            return out + lora * self.scale[name]
        # DoRA: ||W + s B A|| is computed from detached arrays, so no gradient flows through it
        norm = self._weight_norm(base.weight.data + self._lora_weight(name))
        scale = self.lora_magnitude_vector[name].weight / Tensor._wrap(norm, base.weight.backend)
        if h is x:  # no dropout: W x is the base output less its bias, no second matmul (PEFT)
            wx = out if base.bias is None else out - base.bias
        else:
            wx = F.linear(h, base.weight)
        return out + (scale - 1.0) * wx + scale * lora * self.scale[name]


class LoraEmbedding(LoraLayer):
    """y = W[ids] + s · (A^T[ids]) B^T with A (r, V) zero and B (d, r) Gaussian at init (PEFT)."""

    adapter_attrs = ("lora_embedding_A", "lora_embedding_B")
    bare_attrs = ("lora_embedding_A", "lora_embedding_B")

    def update_layer(self, name: str, config: LoraConfig, path: str) -> None:
        r = self._setup(name, config, path)
        w = self.base_layer.weight
        vocab, dim = w.shape
        a = new_parameter((r, vocab), w.dtype, w.backend)
        b = new_parameter((dim, r), w.dtype, w.backend)
        nn.init.zeros_(a)
        nn.init.normal_(b)
        if config.init_lora_weights is False:
            nn.init.normal_(a)
        self.lora_embedding_A[name], self.lora_embedding_B[name] = _Weight(a), _Weight(b)

    def delta_weight(self, name: str) -> Any:
        mm = self.base_layer.weight.backend.matmul
        a, b = self.lora_embedding_A[name].weight.data, self.lora_embedding_B[name].weight.data
        return mm(b, a).T * self.scale[name]  # (V, d)

    def adapted_forward(self, ids: Any, name: str) -> Tensor:
        a, b = self.lora_embedding_A[name].weight, self.lora_embedding_B[name].weight
        # (..., r): the rows of A^T for ids; the padding id's column of A gets no gradient, as in PEFT
        rows = F.embedding(ids, F.transpose(a, 0, 1), self.base_layer.padding_idx)
        return self.base_layer(ids) + F.matmul(rows, F.transpose(b, 0, 1)) * self.scale[name]


class LoraConv2d(LoraLayer):
    """y = conv(x) + s · conv_1x1_B(conv_A(x)), conv_A with the base's kernel, stride, padding."""

    adapter_attrs = ("lora_A", "lora_B")

    @classmethod
    def validate(cls, base_layer: nn.Module, config: LoraConfig, path: str) -> None:
        super().validate(base_layer, config, path)
        if base_layer.groups != 1:
            raise ValueError(f"LoRA on grouped convolutions is not supported ({path})")

    def update_layer(self, name: str, config: LoraConfig, path: str) -> None:
        r = self._setup(name, config, path)
        base = self.base_layer
        dtype, backend = base.weight.dtype, base.weight.backend
        a = nn.Conv2d(
            base.in_channels,
            r,
            base.kernel_size,
            base.stride,
            base.padding,
            base.dilation,
            bias=False,
            dtype=dtype,
            backend=backend,
        )
        b = nn.Conv2d(r, base.out_channels, 1, bias=False, dtype=dtype, backend=backend)
        if config.init_lora_weights == "gaussian":
            nn.init.normal_(a.weight, 0.0, 1.0 / r)
        nn.init.zeros_(b.weight)
        if config.init_lora_weights is False:
            nn.init.kaiming_uniform_(b.weight, a=math.sqrt(5))
        self.lora_A[name], self.lora_B[name] = a, b

    def delta_weight(self, name: str) -> Any:
        mm = self.base_layer.weight.backend.matmul
        a = self.lora_A[name].weight.data  # (r, C, kh, kw)
        b = self.lora_B[name].weight.data[:, :, 0, 0]  # (O, r)
        return (
            mm(b, a.reshape(a.shape[0], -1)).reshape(self.base_layer.weight.shape)
            * self.scale[name]
        )

    def adapted_forward(self, x: Tensor, name: str) -> Tensor:
        h = self._dropout(x, name)
        return self.base_layer(x) + self.lora_B[name](self.lora_A[name](h)) * self.scale[name]


LoraConfig.layer_classes = {
    nn.Linear: LoraLinear,
    nn.Embedding: LoraEmbedding,
    nn.Conv2d: LoraConv2d,
}
