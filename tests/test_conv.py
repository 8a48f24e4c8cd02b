"""conv2d, max_pool2d, avg_pool2d beyond the catalogue: PyTorch 2.13 reference values (stored
fixture), max-pool ties and NaNs, frozen inputs, odd strides, dtypes, and the error messages."""

import json
from pathlib import Path

import numpy as np
import pytest

import minift as mf
from minift import functional as F
from minift.catalogue.conv import conv2d_reference, pool_reference

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torch_conv.json").read_text())


# --- PyTorch 2.13 reference values (tests/fixtures/make_torch_conv.py) ----------------------------
def test_fixture_provenance():
    provenance = FIXTURE["provenance"]
    assert provenance["library"].startswith("torch 2.13.0")
    assert provenance["dtype"] == "float64"


@pytest.mark.parametrize("name", sorted(FIXTURE["cases"]))
def test_matches_pytorch(name, backend):
    entry = FIXTURE["cases"][name]
    inputs = {k: mf.tensor(np.array(v), requires_grad=True) for k, v in entry["inputs"].items()}
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["params"].items()}
    out = getattr(F, entry["op"])(*inputs.values(), **params)
    np.testing.assert_allclose(out.numpy(), np.array(entry["output"]), rtol=1e-10, atol=1e-10)
    out.backward(np.array(entry["cotangent"]))
    for k, expected in entry["grads"].items():
        np.testing.assert_allclose(
            inputs[k].grad.numpy(), np.array(expected), rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize("name", sorted(FIXTURE["cases"]))
def test_catalogue_references_match_pytorch(name):
    entry = FIXTURE["cases"][name]
    inputs = [np.array(v) for v in entry["inputs"].values()]
    params = dict(entry["params"])
    if entry["op"] == "conv2d":
        expected = conv2d_reference(*inputs, **params)
    else:
        mode = entry["op"][:3]
        expected = pool_reference(*inputs, params.pop("kernel_size"), mode=mode, **params)
    np.testing.assert_allclose(expected, np.array(entry["output"]), rtol=1e-10, atol=1e-10)


# --- max pooling: ties, NaN, defaults -------------------------------------------------------------
def test_max_pool_tie_goes_to_first_maximum_in_window():
    x = mf.tensor(np.ones((1, 1, 3, 3)), requires_grad=True)
    F.max_pool2d(x, 2, stride=1).sum().backward()
    # each of the four 2x2 windows sends its gradient to its own top-left pixel
    expected = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], expected)


def test_max_pool_overlapping_windows_accumulate_on_a_shared_maximum():
    values = np.zeros((1, 1, 3, 3))
    values[0, 0, 1, 1] = 5.0
    x = mf.tensor(values, requires_grad=True)
    F.max_pool2d(x, 2, stride=1).sum().backward()
    assert x.grad.numpy()[0, 0, 1, 1] == 4.0 and x.grad.numpy().sum() == 4.0


def test_max_pool_nan_propagates_and_its_last_nan_takes_the_gradient():
    # PyTorch 2.13 (CPU) checked by hand: [[1, nan], [nan, 4]] -> nan, gradient to the second nan
    values = np.arange(16.0).reshape(1, 1, 4, 4)
    values[0, 0, 0, 1] = values[0, 0, 1, 0] = values[0, 0, 2, 3] = np.nan
    x = mf.tensor(values, requires_grad=True)
    y = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(np.isnan(y.numpy()[0, 0]), [[True, False], [False, True]])
    y.backward(np.ones(y.shape))
    expected = np.zeros((4, 4))
    expected[1, 0] = expected[1, 3] = expected[3, 1] = expected[2, 3] = 1.0
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], expected)


def test_pool_stride_defaults_to_kernel_size():
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 4))
    for fn, mode in ((F.max_pool2d, "max"), (F.avg_pool2d, "avg")):
        out = fn(mf.tensor(x), 2)
        assert out.shape == (2, 3, 3, 2)
        np.testing.assert_allclose(out.numpy(), pool_reference(x, 2, mode=mode), rtol=1e-12)


def test_avg_pool_counts_padding_zeros():
    x = mf.tensor(np.ones((1, 1, 2, 2)))
    # the corner window holds one real pixel and three padding zeros: 1/4 (count_include_pad)
    np.testing.assert_allclose(F.avg_pool2d(x, 2, padding=1).numpy()[0, 0], np.full((2, 2), 0.25))


# --- convolution: layouts, frozen inputs, dtypes ------------------------------------------------
def test_conv_negative_strides_and_sliced_input(rng):
    x = rng.standard_normal((2, 4, 9, 8))[:, ::2, ::-1, 1::2]  # odd, negative strides
    w = rng.standard_normal((4, 1, 3, 2))
    out = F.conv2d(mf.tensor(x), mf.tensor(w), stride=(1, 2), groups=2)
    np.testing.assert_allclose(
        out.numpy(), conv2d_reference(x, w, stride=(1, 2), groups=2), rtol=1e-12
    )


@pytest.mark.parametrize("frozen", ["x", "weight"])
def test_conv_frozen_input_gets_no_gradient_and_keeps_nothing_for_it(frozen, rng):
    x_data, w_data, g = (rng.standard_normal(s) for s in ((2, 3, 6, 6), (4, 3, 3, 3), (2, 4, 6, 6)))
    full_x, full_w = mf.tensor(x_data, requires_grad=True), mf.tensor(w_data, requires_grad=True)
    F.conv2d(full_x, full_w, padding=1).backward(g)
    x = mf.tensor(x_data, requires_grad=frozen != "x")
    w = mf.tensor(w_data, requires_grad=frozen != "weight")
    y = F.conv2d(x, w, padding=1)
    cols, weight = y._ctx.saved
    assert (cols is None) == (frozen == "weight") and (weight is None) == (frozen == "x")
    y.backward(g)
    live, reference = (w, full_w) if frozen == "x" else (x, full_x)
    assert (x.grad is None) == (frozen == "x") and (w.grad is None) == (frozen == "weight")
    np.testing.assert_allclose(live.grad.numpy(), reference.grad.numpy(), rtol=1e-12)


def test_float32_stays_float32_through_backward(rng):
    x = mf.tensor(rng.standard_normal((2, 4, 5, 5)).astype(np.float32), requires_grad=True)
    w = mf.tensor(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), requires_grad=True)
    b = mf.tensor(np.zeros(4, np.float32), requires_grad=True)
    y = F.max_pool2d(F.conv2d(x, w, b, padding=1, groups=2), 2, 1, 1)
    F.avg_pool2d(y, 3, 1, 1).sum().backward()
    assert y.dtype == np.float32
    assert {t.grad.dtype for t in (x, w, b)} == {np.dtype(np.float32)}


def test_conv_no_graph_under_no_grad(rng):
    x = mf.tensor(rng.standard_normal((1, 2, 4, 4)), requires_grad=True)
    w = mf.tensor(rng.standard_normal((2, 2, 3, 3)), requires_grad=True)
    with mf.no_grad():
        y = F.conv2d(x, w)
    assert not y.requires_grad and y._ctx is None


# --- errors name the problem --------------------------------------------------------------------
def _conv(x_shape, w_shape, b_shape=None, **params):
    bias = None if b_shape is None else mf.tensor(np.zeros(b_shape))
    return F.conv2d(mf.tensor(np.zeros(x_shape)), mf.tensor(np.zeros(w_shape)), bias, **params)


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, params, message",
    [
        (
            (3, 5, 5),
            (2, 3, 3, 3),
            None,
            {},
            r"input must be 4-D \(N, C, H, W\), got shape \(3, 5, 5\)",
        ),
        ((1, 3, 5, 5), (2, 3, 3), None, {}, r"weight must be 4-D .* got shape \(2, 3, 3\)"),
        (
            (1, 3, 5, 5),
            (2, 1, 3, 3),
            None,
            {"groups": 2},
            r"input channels 3 of input \(1, 3, 5, 5\) are not divisible by groups=2",
        ),
        (
            (1, 4, 5, 5),
            (2, 4, 3, 3),
            None,
            {"groups": 2},
            r"weight \(2, 4, 3, 3\) expects 4 input channels per group, but input \(1, 4, 5, 5\) "
            + r"with groups=2 has 2",
        ),
        (
            (1, 4, 5, 5),
            (3, 2, 3, 3),
            None,
            {"groups": 2},
            r"out channels 3 of weight \(3, 2, 3, 3\) are not divisible by groups=2",
        ),
        ((1, 3, 5, 5), (2, 3, 3, 3), (3,), {}, r"bias must have shape \(2,\) .* got \(3,\)"),
        (
            (1, 3, 2, 5),
            (2, 3, 3, 3),
            None,
            {},
            r"output size \(0, 3\) is empty: input \(1, 3, 2, 5\) with kernel \(3, 3\)",
        ),
        (
            (1, 3, 5, 5),
            (2, 3, 3, 3),
            None,
            {"stride": 0},
            r"stride must be an int or a pair of ints >= 1, got 0",
        ),
        (
            (1, 3, 5, 5),
            (2, 3, 3, 3),
            None,
            {"padding": (1, -1)},
            r"padding must be .* >= 0, got \(1, -1\)",
        ),
        (
            (1, 3, 5, 5),
            (2, 3, 3, 3),
            None,
            {"dilation": (1, 2, 3)},
            r"dilation must be .* got \(1, 2, 3\)",
        ),
        ((1, 3, 5, 5), (2, 3, 3, 3), None, {"stride": 1.5}, r"stride must be .* got 1.5"),
        ((1, 3, 5, 5), (2, 3, 3, 3), None, {"groups": 0}, r"groups must be a positive int, got 0"),
    ],
)
def test_conv_errors(x_shape, w_shape, b_shape, params, message):
    with pytest.raises(ValueError, match="conv2d: " + message):
        _conv(x_shape, w_shape, b_shape, **params)


@pytest.mark.parametrize("fn, op", [(F.max_pool2d, "max_pool2d"), (F.avg_pool2d, "avg_pool2d")])
def test_pool_errors(fn, op):
    x = mf.tensor(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=rf"{op}: input must be 4-D .* got shape \(2, 4, 4\)"):
        fn(mf.tensor(np.zeros((2, 4, 4))), 2)
    with pytest.raises(
        ValueError, match=rf"{op}: padding \(2, 2\) must be at most half the kernel size \(3, 3\)"
    ):
        fn(x, 3, padding=2)
    with pytest.raises(ValueError, match=rf"{op}: output size \(0, 0\) is empty"):
        fn(x, 5)
    with pytest.raises(ValueError, match=rf"{op}: kernel_size must be .* >= 1, got 0"):
        fn(x, 0)
