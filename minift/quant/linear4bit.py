"""Linear4bit: a frozen Linear whose weight is stored as 4-bit codes, and quantize_model.

QLoRA (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314, Eq. 5) keeps the base weight
as NF4 codes with one scale per block and rebuilds it in the compute dtype for each product:

    y = x · dequant(codes, absmax)^T + b,      dequant = code_table[codes] · absmax[block]

Only x (and b, if it trains) get gradients: dy/dx = dequant(...), rebuilt again in backward
rather than saved, so 4.5 bits per weight (4.127 with double quantization) is all that stays
in memory between the passes. The dequantization is the backend's ``nf4_dequantize`` (one
xp-vectorised function for NumPy and CuPy) so a CUDA kernel can fuse it later.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backends import get_backend
from minift import nn
from minift.autograd import Function
from minift.functional.cuda_ops import kernels_for
from minift.nn.module import Parameter
from minift.quant.blockwise import (
    DQ_BLOCKSIZE,
    QuantState,
    check_layout,
    dequantize_absmax,
    quantize_4bit,
)
from minift.quant.codes import CODES
from minift.tensor import Tensor, get_default_backend, get_default_dtype

# buffer name -> the QuantState field it holds; which ones a layer has depends on double_quant
PLAIN_BUFFERS = {"weight_packed": "packed", "weight_absmax": "absmax"}
DOUBLE_BUFFERS = {
    "weight_packed": "packed",
    "weight_absmax_q": "absmax_q",
    "weight_absmax_scale": "absmax_scale",
    "weight_absmax_mean": "absmax_mean",
}


class Linear4bitFunction(Function):
    """y = x W^T + b with W = dequant(codes, scales) rebuilt from the 4-bit codes.

    dx = dy W (W rebuilt once more: only the codes are kept), db = sum of dy over every
    leading position. The codes and scales are constants: they get no gradient.
    """

    @staticmethod
    def forward(ctx, x, bias, packed, absmax, table, blocksize, shape):
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        ks = kernels_for(ctx.backend, x2, absmax)
        if ks is not None:  # one kernel: the 4-bit codes are read once, W is never stored
            from backends.kernels import nf4

            code = ks.xp.asarray(table, dtype=ks.xp.float32)
            y = nf4.matmul(ks, ks.xp.ascontiguousarray(x2), packed, absmax, code, blocksize, *shape)
        else:
            weight = ctx.backend.nf4_dequantize(packed, absmax, table, blocksize, shape)
            weight = weight.astype(x.dtype, copy=False)  # the compute dtype is the input's
            y = ctx.backend.matmul(x2, weight.T)  # (N, out)
        if bias is not None:
            y += bias
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(packed, absmax)  # 4-bit codes and scales, not the float W
        ctx.layout, ctx.lead, ctx.dtype = (table, blocksize, shape), x.shape[:-1], x.dtype
        return y.reshape(*ctx.lead, shape[0])

    @staticmethod
    def backward(ctx, g):
        need_x, need_b = ctx.needs_input_grad[:2]
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        gx = gb = None
        if need_x:
            weight = ctx.backend.nf4_dequantize(*ctx.saved, *ctx.layout).astype(ctx.dtype)
            gx = ctx.backend.matmul(g2, weight).reshape(*ctx.lead, ctx.layout[2][1])
        if need_b:
            gb = g2.sum(axis=0)
        return gx, gb, None, None


class Linear4bit(nn.Module):
    """y = x dequant(W_4bit)^T + b: a Linear(in_features, out_features) with a frozen 4-bit W.

    The weight lives in buffers (state_dict and safetensors carry them): ``weight_packed``
    (uint8, two codes per byte, first element in the high nibble) and the block scales,
    ``weight_absmax`` (float32, one per ``blocksize`` weights) or, with ``double_quant``,
    ``weight_absmax_q`` (uint8) + ``weight_absmax_scale`` (float32 per 256 scales) +
    ``weight_absmax_mean`` (float32). ``bias`` stays a float Parameter. Built empty (zero
    codes) by the constructor, filled by ``from_linear``; ``weight`` rebuilds W as a new frozen
    Tensor on every access (for reading it, not for assigning to it).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        code: str = "nf4",
        blocksize: int = 64,
        double_quant: bool = False,
        dtype: Any = None,
        backend: Any = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        check_layout(code, blocksize)
        self.code, self.blocksize, self.double_quant = code, int(blocksize), bool(double_quant)
        be = get_backend(backend) if backend is not None else get_default_backend()
        for name, (shape, buffer_dtype) in self.buffer_layout().items():
            self.register_buffer(name, Tensor._wrap(be.zeros(shape, buffer_dtype), be))
        if bias:
            self.bias = Parameter(
                be.zeros((out_features,), dtype or get_default_dtype()), backend=be
            )
        else:
            self.register_parameter("bias", None)

    def buffer_layout(self) -> dict[str, tuple[tuple, str]]:
        """Buffer name -> (shape, dtype) for this layer's size, code layout and block size."""
        n = self.in_features * self.out_features
        n_blocks = math.ceil(n / self.blocksize)
        layout = {"weight_packed": ((math.ceil(n / 2),), "uint8")}
        if not self.double_quant:
            return {**layout, "weight_absmax": ((n_blocks,), "float32")}
        return {
            **layout,
            "weight_absmax_q": ((n_blocks,), "uint8"),
            "weight_absmax_scale": ((math.ceil(n_blocks / DQ_BLOCKSIZE),), "float32"),
            "weight_absmax_mean": ((), "float32"),
        }

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, code: str = "nf4", blocksize: int = 64, double_quant: bool = False
    ) -> Linear4bit:
        """Quantize ``linear.weight`` blockwise (blockwise.quantize_4bit); the bias is shared.

        On the meta backend only the buffers' shapes are made (to count bytes).
        """
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            False,
            code,
            blocksize,
            double_quant,
            w.dtype,
            w.backend,
        )
        if linear.bias is not None:
            layer.bias = linear.bias  # the same Parameter: it keeps its requires_grad
        if w.backend.name != "meta":
            layer.set_quant_state(
                quantize_4bit(w.backend.to_numpy(w.data), code, blocksize, double_quant)
            )
        return layer

    # --- the 4-bit state ------------------------------------------------------------------
    def quant_state(self) -> QuantState:
        """The buffers as a blockwise.QuantState (host NumPy arrays)."""
        names = DOUBLE_BUFFERS if self.double_quant else PLAIN_BUFFERS
        fields = {f: self._buffers[b].numpy() for b, f in names.items()}
        return QuantState(
            shape=(self.out_features, self.in_features),
            blocksize=self.blocksize,
            code=self.code,
            **fields,
        )

    def set_quant_state(self, state: QuantState) -> None:
        """Replace the buffers' arrays with ``state``'s (same layout; new arrays, so an
        autograd graph that saved the old ones still sees them)."""
        if (state.shape, state.blocksize, state.code) != (
            (self.out_features, self.in_features),
            self.blocksize,
            self.code,
        ):
            raise ValueError(
                f"QuantState {state.shape} {state.code} blocksize {state.blocksize} does not fit "
                f"{self.extra_repr()}"
            )
        names = DOUBLE_BUFFERS if self.double_quant else PLAIN_BUFFERS
        be = self.weight_packed.backend
        for buffer, field in names.items():
            self._buffers[buffer].data = be.asarray(np.asarray(getattr(state, field)))

    def absmax(self) -> Any:
        """The float32 block scales (n_blocks,) on the layer's backend, undoing double quant."""
        if not self.double_quant:
            return self.weight_absmax.data
        return dequantize_absmax(
            self.weight_absmax_q.data, self.weight_absmax_scale.data, self.weight_absmax_mean.data
        )

    def dequantized(self) -> Any:
        """W (out_features, in_features) as a raw float32 array of the layer's backend."""
        be = self.weight_packed.backend
        shape = (self.out_features, self.in_features)
        if be.name == "meta":  # shapes only: LoRA can still size its adapters from it
            return be.empty(shape, "float32")
        return be.nf4_dequantize(
            self.weight_packed.data, self.absmax(), CODES[self.code], self.blocksize, shape
        )

    @property
    def weight(self) -> Tensor:
        """W rebuilt from the codes: a new frozen Tensor (assigning to it changes nothing)."""
        return Tensor._wrap(self.dequantized(), self.weight_packed.backend)

    @property
    def num_packed_parameters(self) -> int:
        """The weights held as 4-bit codes: they are parameters of the model, though no
        Parameter holds them (PEFT counts bitsandbytes' packed weights the same way)."""
        return self.in_features * self.out_features

    @property
    def nbytes(self) -> int:
        """Bytes of the 4-bit weight (codes + scales), the bias not included."""
        names = DOUBLE_BUFFERS if self.double_quant else PLAIN_BUFFERS
        return sum(int(self._buffers[b].data.nbytes) for b in names)

    def to_linear(self) -> nn.Linear:
        """A float nn.Linear holding the dequantized W (and this layer's bias Parameter)."""
        be = self.weight_packed.backend
        # built on meta, so that no random init runs (nor moves the seeded generator)
        linear = nn.Linear(self.in_features, self.out_features, False, backend="meta")
        linear.weight = Parameter(self.dequantized(), backend=be)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear4bit: input has {x.shape[-1]} features, the layer wants {self.in_features}"
            )
        shape = (self.out_features, self.in_features)
        packed, absmax = self.weight_packed.data, self.absmax()  # constants: no gradient
        table = CODES[self.code]  # the 16 values the indices stand for
        return Linear4bitFunction.apply(
            x, self.bias, packed, absmax, table=table, blocksize=self.blocksize, shape=shape
        )

    def extra_repr(self) -> str:
        dq = ", double_quant" if self.double_quant else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, code={self.code}, blocksize={self.blocksize}{dq}"
        )


def _skipped(path: str, skip: tuple[str, ...]) -> bool:
    return any(path == s or path.endswith("." + s) for s in skip)


def _tied_weights(model: nn.Module) -> set[int]:
    """ids of Parameters that more than one module holds (GPT-2's lm_head and embedding)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    return {pid for pid, n in owners.items() if n > 1}


def quantize_model(
    model: nn.Module,
    code: str = "nf4",
    skip: tuple[str, ...] | list[str] = ("lm_head",),
    blocksize: int = 64,
    double_quant: bool = False,
) -> nn.Module:
    """Replace every nn.Linear of ``model`` (in place) by a Linear4bit, except ``skip``.

    A ``skip`` entry names a module by its dotted path or its last parts ("lm_head",
    "classifier", "attention.output.dense"). Every layer is quantized before the first one is
    replaced, so an error (a bad block size, a tied weight) leaves the model as it was.

    Returns:
        ``model``, now with Linear4bit layers.
    Raises:
        TypeError: the model already has adapters (quantize first, then add LoRA).
        ValueError: a Linear to quantize has its weight tied to another module (skip it), or
            the block size or code is not one blockwise.quantize_4bit accepts.
    """
    from minift.peft.base import AdapterLayer, ModulesToSave

    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    tied = _tied_weights(model)
    plan = []
    for path, module in model.named_modules():
        if isinstance(module, (AdapterLayer, ModulesToSave)):
            raise TypeError(
                f"{path} is a PEFT wrapper: quantize the base model first, then add adapters "
                "(get_peft_model(quantize_model(model), config))"
            )
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if type(child) is not nn.Linear or _skipped(child_path, skip):
                continue
            if id(child.weight) in tied:
                raise ValueError(
                    f"{child_path}.weight is tied to another module's weight; quantizing it "
                    f"would untie them: add {name!r} to skip"
                )
            plan.append((module, name, child))
    quantized = [
        Linear4bit.from_linear(linear, code, blocksize, double_quant) for *_, linear in plan
    ]
    for (parent, name, _), layer in zip(plan, quantized):
        layer.train(parent.training)
        setattr(parent, name, layer)
    return model


def quantized_layers(model: nn.Module) -> dict[str, Linear4bit]:
    """Dotted path -> Linear4bit for every 4-bit layer of ``model``."""
    return {path: m for path, m in model.named_modules() if isinstance(m, Linear4bit)}
