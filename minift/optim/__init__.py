"""Optimizers, learning-rate schedules and gradient clipping (``from minift import optim``).

    opt = optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    sched = optim.get_scheduler("cosine", opt, num_warmup_steps=100, num_training_steps=1000)
    loss.backward(); optim.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step()
"""

from minift.optim.adam import Adam, AdamW
from minift.optim.clip import clip_grad_norm_, clip_grad_value_
from minift.optim.optimizer import Optimizer
from minift.optim.schedulers import (
    SCHEDULES,
    LambdaLR,
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_scheduler,
)
from minift.optim.sgd import SGD

__all__ = [
    "SCHEDULES", "SGD", "Adam", "AdamW", "LambdaLR", "Optimizer", "clip_grad_norm_",
    "clip_grad_value_", "get_constant_schedule", "get_constant_schedule_with_warmup",
    "get_cosine_schedule_with_warmup", "get_linear_schedule_with_warmup", "get_scheduler",
]
