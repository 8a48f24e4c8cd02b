"""The op catalogue: one entry per differentiable op, driving tests and ``minift gradcheck``.

Each ``OpCase`` names a minift op, a NumPy reference written independently of it, and a
function that makes float64 inputs from a seeded generator. One catalogue drives the forward
test (minift == reference), the float64 gradient check and the backend-parity test, so adding
an op means adding one entry, never a new test file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class OpCase:
    """One op, its independent NumPy reference, and how to make its inputs.

    Attributes:
        name: shown in test ids and in the ``minift gradcheck`` table.
        fn: the minift op, called with one Tensor per input.
        reference: the same math on NumPy arrays.
        make_inputs: seeded generator -> list of NumPy arrays. Float arrays are differentiated;
            integer and boolean arrays (indices, targets, masks) are passed but not checked.
        differentiable: False for ops whose gradient is zero almost everywhere.
        atol, rtol: gradient-check tolerances (central differences in float64).
        tags: labels that tests filter on ("numpy-rng": the reference redraws NumPy's random
            stream, so the forward comparison holds on the numpy backend only).
    """

    name: str
    fn: Callable
    reference: Callable
    make_inputs: Callable[[np.random.Generator], list]
    differentiable: bool = True
    atol: float = 1e-6
    rtol: float = 1e-5
    tags: tuple = field(default=())


def all_cases() -> list[OpCase]:
    """Every catalogued op, in reading order."""
    from minift.catalogue import activation, attention, basic, conv, loss, norm, shape

    modules = (basic, shape, activation, norm, loss, attention, conv)
    return [case for module in modules for case in module.CASES]
