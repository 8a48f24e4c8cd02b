"""Learning-rate schedules: lr(t) = base_lr * f(t), one factor function per schedule.

Fine-tuning almost always warms up (f rises linearly from 0, so Adam's first, noisy moment
estimates take small steps) and then decays, linearly or along a half cosine, to 0 at the last
step. The factor functions are Hugging Face transformers' (``get_scheduler`` with the same
names); ``LambdaLR`` is PyTorch's: construction applies f(0), each ``step()`` advances t by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from minift.optim.optimizer import Optimizer


class LambdaLR:
    """Set each group's lr to ``base_lr * lr_lambda(t)``, t = number of ``step()`` calls.

    Args:
        optimizer: whose param groups are scheduled; their current lr is the base lr.
        lr_lambda: a function of the step, or one per param group.
    """

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float] | list) -> None:
        groups = optimizer.param_groups
        many = isinstance(lr_lambda, (list, tuple))
        lambdas = list(lr_lambda) if many else [lr_lambda] * len(groups)
        if len(lambdas) != len(groups):
            raise ValueError(f"got {len(lambdas)} lr_lambdas for {len(groups)} param groups")
        self.optimizer = optimizer
        self.lr_lambdas = lambdas
        self.base_lrs = [group["lr"] for group in groups]
        self.last_epoch = -1
        self.step()

    def get_lr(self) -> list[float]:
        return [base * f(self.last_epoch) for base, f in zip(self.base_lrs, self.lr_lambdas)]

    def step(self) -> None:
        """Advance one step (call it after ``optimizer.step()``) and write the new lrs."""
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The lr of each group as set by the latest ``step()``."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """The step count and base lrs (the factor functions are code, not state)."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "last_lr": list(self._last_lr)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume: restore the step count and put the saved lrs back into the groups."""
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(state_dict['base_lrs'])} base lrs, the optimizer "
                f"has {len(self.optimizer.param_groups)} param groups"
            )
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._last_lr = list(state_dict["last_lr"])
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


# --- Hugging Face transformers' factor functions (module level, so they pickle) ----------------
def _constant(step: int) -> float:
    return 1.0


def _warmup(step: int, num_warmup_steps: int) -> float:
    """Linear warmup t / W, used by every schedule below for t < W."""
    return step / max(1.0, num_warmup_steps)


def _constant_with_warmup(step: int, *, num_warmup_steps: int) -> float:
    return _warmup(step, num_warmup_steps) if step < num_warmup_steps else 1.0


def _linear(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))


def _cosine(step: int, *, num_warmup_steps: int, num_training_steps: int,
            num_cycles: float) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))


def get_constant_schedule(optimizer: Optimizer) -> LambdaLR:
    """f(t) = 1."""
    return LambdaLR(optimizer, _constant)


def get_constant_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int) -> LambdaLR:
    """f(t) = t / W for t < W, then 1."""
    return LambdaLR(optimizer, partial(_constant_with_warmup, num_warmup_steps=num_warmup_steps))


def get_linear_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                    num_training_steps: int) -> LambdaLR:
    """f(t) = t / W for t < W, then max(0, (T - t) / (T - W)): a straight line down to 0 at T."""
    return LambdaLR(optimizer, partial(_linear, num_warmup_steps=num_warmup_steps,
                                       num_training_steps=num_training_steps))


def get_cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                    num_training_steps: int, num_cycles: float = 0.5) -> LambdaLR:
    """f(t) = t / W for t < W, then 0.5 * (1 + cos(2 pi c s)), s = (t - W) / (T - W).

    The default c = 0.5 cycles is a half cosine from 1 down to 0 at t = T.
    """
    return LambdaLR(optimizer, partial(_cosine, num_warmup_steps=num_warmup_steps,
                                       num_training_steps=num_training_steps,
                                       num_cycles=num_cycles))


SCHEDULES = {
    "constant": get_constant_schedule,
    "constant_with_warmup": get_constant_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
}


def get_scheduler(name: str, optimizer: Optimizer, num_warmup_steps: int | None = None,
                  num_training_steps: int | None = None, num_cycles: float = 0.5) -> LambdaLR:
    """The schedule called ``name`` (Hugging Face transformers' names and definitions).

    Args:
        name: one of ``constant``, ``constant_with_warmup``, ``linear``, ``cosine``.
        optimizer: its groups' current lrs are the peak (base) lrs.
        num_warmup_steps: W, steps of linear warmup from 0 (all but ``constant`` need it).
        num_training_steps: T, the step at which ``linear`` and ``cosine`` reach 0.
        num_cycles: cosine periods over the decay; 0.5 is a half cosine (``cosine`` only).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULES)}")
    if name == "constant":
        return get_constant_schedule(optimizer)
    if num_warmup_steps is None or num_warmup_steps < 0:
        raise ValueError(f"scheduler {name!r} needs num_warmup_steps >= 0, got {num_warmup_steps}")
    if name == "constant_with_warmup":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps)
    if num_training_steps is None or num_training_steps <= 0:
        raise ValueError(
            f"scheduler {name!r} needs num_training_steps > 0, got {num_training_steps}"
        )
    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps)
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps,
                                           num_cycles)
