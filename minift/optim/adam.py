"""Adam and AdamW: per-coordinate step sizes from running moments of the gradient.

Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 1) keeps
exponential moving averages of g and g^2 and steps by m_hat / (sqrt(v_hat) + eps), so every
coordinate moves about lr per step whatever its gradient's scale. AdamW (Loshchilov & Hutter,
"Decoupled Weight Decay Regularization", ICLR 2019, Algorithm 2) shrinks the weights directly
instead of adding lambda * p to the gradient, where Adam's normalisation would cancel it.
The arithmetic follows PyTorch's single-tensor ``torch.optim.Adam``/``AdamW``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from minift.optim.optimizer import Optimizer
from minift.tensor import Tensor


class Adam(Optimizer):
    """Adam with L2 weight decay, one step t = 1, 2, ... per parameter p with gradient g:

        g = g + weight_decay * p                     (L2: the decay goes through the moments)
        m = beta1 * m + (1 - beta1) * g              (first moment, Eq. in Alg. 1)
        v = beta2 * v + (1 - beta2) * g^2            (second moment)
        v_max = max(v_max, v)  if amsgrad            (Reddi et al. 2018; v_max replaces v below)
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)   (bias correction: m, v start at 0)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    Args:
        params: Tensors or param-group dicts (see ``Optimizer``).
        lr: learning rate.
        betas: (beta1, beta2), decay rates of the two moments, each in [0, 1).
        eps: added to the denominator for numerical stability.
        weight_decay: L2 coefficient added to the gradient.
        amsgrad: use the running maximum of v (never lets the step size grow back).
    """

    decoupled = False  # AdamW flips this: decay applied to p, not to g

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                        "amsgrad": amsgrad}
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        if len(group["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in group["betas"]):
            raise ValueError(f"invalid betas {group['betas']}: need two values in [0, 1)")
        if group["eps"] < 0:
            raise ValueError(f"invalid eps {group['eps']}: must be >= 0")

    def _update(self, p: Tensor, grad: Any, state: dict, group: dict) -> None:
        xp = p.backend.xp
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        if wd != 0 and self.decoupled:
            p.data *= 1 - lr * wd  # AdamW: p <- p - lr * lambda * p, outside the moments
        elif wd != 0:
            grad = grad + wd * p.data  # a new array: the incoming gradient is read-only
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        if group["amsgrad"]:
            v = xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        # sqrt(v_hat) + eps with v_hat = v / (1 - beta2^t); the 1/(1 - beta1^t) goes into the lr
        denom = xp.sqrt(v)
        denom /= math.sqrt(1 - beta2**t)
        denom += group["eps"]
        step = m / denom
        step *= lr / (1 - beta1**t)
        p.data -= step


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2):

        p = p * (1 - lr * weight_decay)              (decay first, never seen by m or v)
        then the Adam update above with weight_decay = 0 in the gradient.

    With L2 in Adam the decay term lambda * p is divided by sqrt(v_hat), so weights with large
    gradients are barely regularised; decoupling makes every weight decay at the same rate.
    The default weight_decay is 0.01 (PyTorch's).
    """

    decoupled = True

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)
