"""Stochastic gradient descent with momentum (heavy ball or Nesterov) and L2 weight decay.

Plain SGD steps against the gradient, ``p <- p - lr * g``. Momentum keeps a running sum of past
steps so that consistent directions build up speed and noisy ones cancel (Polyak 1964; Nesterov
as reformulated by Sutskever et al. 2013).
The update order is exactly PyTorch's ``torch.optim.SGD``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from minift.optim.optimizer import Optimizer
from minift.tensor import Tensor


class SGD(Optimizer):
    """SGD, one step per parameter p with gradient g (mu = momentum, tau = dampening):

        d = g + weight_decay * p                    (L2 penalty folded into the gradient)
        b = d                       on the first step
        b = mu * b + (1 - tau) * d  afterwards      (the momentum buffer)
        d = d + mu * b  if nesterov  else  b        (look ahead along the buffer)
        p = p - lr * d

    Args:
        params: Tensors or param-group dicts (see ``Optimizer``).
        lr: learning rate (required: there is no good default).
        momentum: mu in [0, 1); 0 means plain SGD and keeps no state.
        dampening: tau, scales the new gradient into the buffer.
        nesterov: Nesterov momentum; needs momentum > 0 and dampening == 0.
        weight_decay: L2 coefficient lambda, adds lambda * p to the gradient.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float,
                 momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "nesterov": nesterov,
                        "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        if group["momentum"] < 0:
            raise ValueError(f"invalid momentum {group['momentum']}: must be >= 0")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening == 0")

    def _update(self, p: Tensor, grad: Any, state: dict, group: dict) -> None:
        momentum, wd = group["momentum"], group["weight_decay"]
        d = grad + wd * p.data if wd != 0 else grad  # a new array: grad itself is read-only
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * d
            d = d + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * d
