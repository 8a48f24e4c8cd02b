"""gradcheck must catch a wrong backward, name the worst entry, and accept a right one."""

import numpy as np
import pytest

import minift as mf
from minift.autograd import Function
from minift.gradcheck import gradcheck_report


class WrongSquare(Function):
    """y = x^2 with a deliberately wrong derivative (x instead of 2x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


def _x(shape=(3, 4), seed=0):
    return mf.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def test_gradcheck_catches_a_wrong_backward_and_reports_both_gradients():
    with pytest.raises(mf.GradcheckError) as err:
        mf.gradcheck(WrongSquare.apply, [_x()])
    message = str(err.value)
    assert "analytic" in message and "numeric" in message and "input 0" in message


def test_gradcheck_passes_a_right_backward():
    assert mf.gradcheck(lambda x: x * x, [_x()])


def test_report_numbers_are_tiny_for_right_and_large_for_wrong():
    good = gradcheck_report(lambda x: x * x, [_x()])
    bad = gradcheck_report(WrongSquare.apply, [_x()])
    assert good.passed and good.max_abs_error < 1e-8
    assert not bad.passed and bad.max_abs_error > 1e-2
    assert good.entries_checked == 12


def test_large_inputs_are_sampled():
    report = gradcheck_report(lambda x: x * x, [_x((40, 40))], max_entries=50)
    assert report.entries_checked == 50


def test_gradcheck_refuses_float32():
    with pytest.raises(ValueError, match="float64"):
        mf.gradcheck(lambda x: x * x, [mf.tensor([1.0, 2.0], requires_grad=True)])


def test_gradcheck_needs_an_input_with_gradient():
    with pytest.raises(ValueError, match="requires a gradient"):
        mf.gradcheck(lambda x: x * x, [mf.tensor(np.ones(2))])
