"""Shape, indexing and activation semantics that the op catalogue cannot express: gradients
that must accumulate, shared split buffers, dropout statistics and seeding, numerical range,
and the error messages of bad input."""

import math
import warnings

import numpy as np
import pytest

import minift as mf
from minift import functional as F
from minift.functional.indexing import scatter_add_rows


def leaf(array, dtype="float64"):
    return mf.tensor(np.asarray(array, dtype=dtype), requires_grad=True)


# --- repeated indices accumulate --------------------------------------------------------------
def test_fancy_index_repeats_accumulate(backend):
    x = leaf(np.arange(8.0).reshape(4, 2))
    x[[0, 0, 2, -1, 3]].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[2, 2], [0, 0], [1, 1], [2, 2]])


def test_mixed_fancy_index_repeats_accumulate(backend):
    x = leaf(np.zeros((2, 3)))
    (x[:, np.array([1, 1, 1, 0])] * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[2, 6, 0], [2, 6, 0]])


def test_index_with_integer_and_bool_tensors(backend):
    x = leaf(np.arange(6.0))
    ids = mf.tensor(np.array([5, 5, 1]))
    mask = mf.tensor(np.arange(6) % 2 == 0)
    (x[ids].sum() + x[mask].sum()).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1, 1, 1, 0, 1, 2])


def test_basic_slice_is_a_view_and_scatters_back(backend):
    x = leaf(np.arange(12.0).reshape(3, 4))
    y = x[1:, ::2]
    if backend.name == "numpy":
        assert np.shares_memory(y.data, x.data)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0]])


def test_gather_repeats_accumulate(backend):
    x = leaf(np.zeros((2, 3)))
    F.gather(x, 1, np.array([[2, 2, 2], [0, 1, 0]])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 3], [2, 1, 0]])


def test_embedding_gradient_counts_each_id(backend):
    weight = leaf(np.ones((5, 3)), dtype="float32")
    ids = np.array([[0, 4, 4], [4, 1, 0]])
    F.embedding(ids, weight).sum().backward()
    assert weight.grad.dtype == np.float32
    np.testing.assert_array_equal(weight.grad.numpy()[:, 0], [2, 1, 0, 0, 3])


@pytest.mark.parametrize("num_rows, n, d", [(7, 50, 3), (1000, 200, 4), (3, 1, 2)])
def test_scatter_add_rows_matches_add_at(backend, num_rows, n, d, rng):
    ids = rng.integers(0, num_rows, n)
    values = rng.standard_normal((n, d))
    expected = np.zeros((num_rows, d))
    np.add.at(expected, ids, values)
    out = scatter_add_rows(backend, backend.asarray(ids), backend.asarray(values), num_rows)
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-12, atol=1e-12)


# --- split ------------------------------------------------------------------------------------
def test_split_returns_views_of_the_requested_sizes(backend):
    x = mf.tensor(np.arange(14.0).reshape(2, 7))
    pieces = x.split(3, axis=1)
    assert isinstance(pieces, tuple) and [p.shape for p in pieces] == [(2, 3), (2, 3), (2, 1)]
    assert [p.shape[0] for p in F.split(x, [1, 1])] == [1, 1]
    if backend.name == "numpy":
        assert all(np.shares_memory(p.data, x.data) for p in pieces)


def test_split_gradient_with_other_uses_and_unused_pieces(backend):
    x = leaf(np.ones((2, 6)))
    q, _unused, v = x.split(2, axis=-1)
    loss = (q * 2.0).sum() + (v * 3.0).sum() + (x * 10.0).sum()  # x is also used directly
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy()[0], [12, 12, 10, 10, 13, 13])


def test_split_backward_twice_starts_a_fresh_buffer(backend):
    x = leaf(np.ones((4, 2)))
    a, b = x.split(2)
    loss = (a * 2.0).sum() + b.sum()
    loss.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * first)


def test_split_errors_name_the_problem():
    x = mf.zeros(4, 5)
    with pytest.raises(ValueError, match=r"sections \[2, 2\] .* sum to the length 5 of axis 1"):
        x.split([2, 2], axis=1)
    with pytest.raises(ValueError, match="split size must be positive"):
        x.split(0)
    with pytest.raises(IndexError, match="axis 2 is out of range"):
        x.split(1, axis=2)


# --- other shape ops --------------------------------------------------------------------------
def test_squeeze_keeps_axes_that_are_not_size_one():
    x = mf.zeros(1, 3, 1)
    assert x.squeeze().shape == (3,)
    assert x.squeeze(1).shape == (1, 3, 1)  # PyTorch: a no-op, not an error
    assert x.squeeze((0, 2)).shape == (3,)
    assert x.unsqueeze(-1).shape == (1, 3, 1, 1)
    assert F.flatten(mf.tensor(2.0)).shape == (1,)
    assert mf.zeros(2, 3, 4).flatten(1).shape == (2, 12)


def test_expand_is_a_view_and_sums_gradients_back(backend):
    x = leaf(np.ones((3, 1)))
    y = x.expand(2, -1, 4)
    assert y.shape == (2, 3, 4)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 1), 8.0))


def test_shape_op_errors_name_the_problem():
    x = mf.zeros(2, 3)
    with pytest.raises(ValueError, match="axis 1 of size 3 cannot expand to 4"):
        x.expand(2, 4)
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(2, 4\) differ outside axis 0"):
        F.cat([x, mf.zeros(2, 4)])
    with pytest.raises(ValueError, match="same shape"):
        F.stack([x, mf.zeros(3, 2)])
    with pytest.raises(ValueError, match="non-empty"):
        F.cat([])


def test_index_errors_name_the_problem():
    x = mf.zeros(3, 4)
    with pytest.raises(IndexError, match="integers or booleans.*float"):
        x[np.array([0.5, 1.0])]
    with pytest.raises(IndexError, match=r"\[-3, 3\) for axis 0 of tensor shape \(3, 4\)"):
        x[np.array([0, 3])]
    with pytest.raises(IndexError, match=r"\[-4, 4\) for axis 1 .* from -5 to 0"):
        x[..., np.array([0, -5])]
    with pytest.raises(IndexError, match=r"\[-4, 4\) for axis 1 .* from 0 to 4"):
        x[None, 1:, [0, 4]]
    with pytest.raises(IndexError, match=r"gather: indices must lie in \[-4, 4\) for axis 1"):
        F.gather(x, 1, np.array([[0], [4], [1]]))
    assert x[np.array([True, False, True]), np.array([3, -4])].shape == (2,)  # in bounds
    with pytest.raises(ValueError, match="index .* larger than x"):
        F.gather(x, 1, np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(IndexError, match=r"ids must lie in \[0, 3\)"):
        F.embedding(np.array([0, 3]), mf.zeros(3, 2))
    with pytest.raises(TypeError, match="boolean"):
        F.where(np.array([1, 0]), mf.zeros(2), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        F.masked_fill(x, np.zeros((3, 1, 1), dtype=bool), 0.0)


def test_masked_fill_gradient_is_zero_under_the_mask(backend):
    x = leaf(np.ones((2, 3)))
    mask = np.array([True, False, True])
    y = F.masked_fill(x, mask, -np.inf)
    assert np.isneginf(y.numpy()[:, [0, 2]]).all()
    F.where(mask, mf.zeros(2, 3, dtype="float64"), y).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [0, 1, 0]])


# --- activations ------------------------------------------------------------------------------
def test_exact_gelu_matches_math_erf_in_float64():
    x = np.concatenate([np.linspace(-40, 40, 20001), [-1e300, 1e300, 0.0]])
    expected = 0.5 * x * np.vectorize(math.erfc)(-x / math.sqrt(2.0))
    got = F.gelu(mf.tensor(x, dtype="float64")).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)


def test_exact_gelu_float32_is_accurate_and_quiet():
    x = np.linspace(-12, 12, 4001).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * np.vectorize(math.erfc)(-x64 / math.sqrt(2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = F.gelu(mf.tensor(x)).numpy()
        huge = F.gelu(mf.tensor(np.array([-3e38, 3e38], np.float32))).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(huge, np.array([0.0, 3e38], np.float32))


def test_gelu_tanh_stays_close_to_exact():
    x = mf.tensor(np.linspace(-10, 10, 2001), dtype="float64")
    difference = np.abs(F.gelu(x).numpy() - F.gelu(x, approximate="tanh").numpy())
    assert difference.max() < 5e-4  # the largest gap, 4.7e-4, is near x = -2.7
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="erf")


def test_relu_gradient_at_zero_is_zero():
    x = leaf([-1.0, 0.0, 2.0])
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 1])


def test_softmax_and_log_softmax_of_huge_inputs_are_finite(backend):
    x = mf.tensor(np.array([[1e4, -1e4, 0.0], [1e30, 1e30, -1e30]], np.float32), requires_grad=True)
    y = x.softmax(-1)
    log_y = x.log_softmax(-1)
    assert np.isfinite(y.numpy()).all() and np.isfinite(log_y.numpy()).all()
    np.testing.assert_allclose(y.numpy(), [[1, 0, 0], [0.5, 0.5, 0]], atol=1e-6)
    (y * mf.tensor(np.ones((2, 3), np.float32))).sum().backward()
    assert np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(np.exp(log_y.numpy()), y.numpy(), atol=1e-6)


def test_silu_is_quiet_for_large_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = F.silu(mf.tensor(np.array([-1e4, 0.0, 1e4], np.float32))).numpy()
    np.testing.assert_array_equal(y, [0.0, 0.0, 1e4])


# --- dropout ----------------------------------------------------------------------------------
def test_dropout_keeps_the_mean_and_zeroes_about_p():
    x = mf.ones(200_000)
    y = F.dropout(x, p=0.3).numpy()
    assert abs((y == 0).mean() - 0.3) < 0.005
    assert abs(y.mean() - 1.0) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)


def test_dropout_gradient_uses_the_same_mask():
    x = leaf(np.ones(1000))
    y = F.dropout(x, p=0.5)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.numpy())


def test_dropout_is_reproducible_with_manual_seed():
    x = mf.ones(50)
    mf.manual_seed(7)
    first = F.dropout(x, 0.5).numpy()
    mf.manual_seed(7)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), first)
    assert not np.array_equal(F.dropout(x, 0.5).numpy(), first)


def test_dropout_generator_is_its_own_stream():
    x = mf.ones(50)
    be = x.backend
    mf.manual_seed(3)
    expected_global = F.dropout(x, 0.5).numpy()
    mf.manual_seed(3)
    own = F.dropout(x, 0.5, generator=be.generator(11)).numpy()
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), expected_global)  # undisturbed
    np.testing.assert_array_equal(F.dropout(x, 0.5, generator=be.generator(11)).numpy(), own)


def test_dropout_identity_cases_and_p_one():
    x = leaf(np.arange(4.0))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.numpy(), 0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
            F.dropout(x, p)


def test_embedding_padding_idx_gets_no_gradient_but_is_looked_up():
    import minift as mf
    from minift import functional as F

    w = mf.tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    out = F.embedding(np.array([1, 3, 1]), w, padding_idx=1)
    np.testing.assert_array_equal(out.numpy()[0], [3.0, 4.0, 5.0])
    out.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy()[:, 0], [0.0, 0.0, 0.0, 1.0])
