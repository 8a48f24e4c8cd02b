"""The autograd engine: graph walk, accumulation, broadcasting, grad modes, errors."""

import numpy as np
import pytest

import minift as mf
from minift import functional as F
from minift.autograd import unbroadcast


def test_long_chain_has_no_recursion_limit():
    x = mf.tensor(1.0, requires_grad=True, dtype="float64")
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    assert x.grad.item() == pytest.approx(1.0001**10_000, rel=1e-9)


def test_gradient_accumulates_over_uses_and_calls():
    x = mf.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x + x).sum().backward()  # d/dx = 2x + 1
    np.testing.assert_allclose(x.grad.numpy(), [3, 5, 7])
    (x * 2.0).sum().backward()  # a second call adds
    np.testing.assert_allclose(x.grad.numpy(), [5, 7, 9])


def test_diamond_graph_visits_shared_node_once():
    x = mf.tensor(2.0, requires_grad=True, dtype="float64")
    a = x.exp()
    y = a * a + a  # a used twice: dy/dx = (2a + 1) a
    y.backward()
    a_val = np.exp(2.0)
    assert x.grad.item() == pytest.approx((2 * a_val + 1) * a_val)


@pytest.mark.parametrize(
    "grad_shape, shape, expected",
    [((2, 3, 4), (3, 4), (3, 4)), ((2, 3, 4), (3, 1), (3, 1)), ((5, 1), (1,), (1,)), ((4,), (), ())],
)
def test_unbroadcast_sums_to_input_shape(grad_shape, shape, expected):
    g = np.ones(grad_shape)
    out = unbroadcast(g, shape)
    assert out.shape == expected
    assert out.sum() == pytest.approx(g.sum())


def test_broadcast_gradient_is_summed_by_engine():
    b = mf.tensor(np.zeros((1, 3)), requires_grad=True)
    x = mf.tensor(np.ones((4, 3)))
    (x + b).sum().backward()
    np.testing.assert_array_equal(b.grad.numpy(), [[4, 4, 4]])


def test_no_grad_builds_no_graph_and_saves_nothing():
    x = mf.tensor([1.0, 2.0], requires_grad=True)
    with mf.no_grad():
        y = (x * x).exp()
    assert not y.requires_grad and y.is_leaf
    with mf.no_grad(), mf.enable_grad():
        z = x * x
    assert z.requires_grad


def test_no_grad_as_decorator():
    @mf.no_grad()
    def f(t):
        return t * 2.0

    assert not f(mf.tensor([1.0], requires_grad=True)).requires_grad


def test_frozen_inputs_get_no_gradient():
    w = mf.tensor(np.ones((2, 2)), requires_grad=False)
    x = mf.tensor(np.ones((3, 2)), requires_grad=True)
    F.linear(x, w).sum().backward()
    assert w.grad is None and x.grad is not None


def test_backward_twice_through_freed_graph_raises():
    x = mf.tensor([1.0, 2.0], requires_grad=True)
    y = (x + 1.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = mf.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])


def test_saved_arrays_freed_after_backward():
    x = mf.tensor([1.0, 2.0], requires_grad=True)
    y = x * x
    z = y.sum()
    z.backward()
    assert y._ctx.saved is None


def test_backward_on_non_scalar_needs_gradient():
    x = mf.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2.0).backward()
    (x * 2.0).backward(grad=np.array([1.0, -1.0], dtype=np.float32))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, -2.0])


def test_backward_on_tensor_without_graph_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        mf.tensor([1.0]).sum().backward()


def test_detach_cuts_the_graph():
    x = mf.tensor([3.0], requires_grad=True)
    y = x.detach() * x
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0])


def test_requires_grad_only_for_floats():
    with pytest.raises(TypeError, match="floating"):
        mf.tensor([1, 2]).requires_grad_()


def test_dtypes_default_float32_and_float64_preserved():
    assert mf.tensor([1.0]).dtype == np.float32
    assert mf.tensor([1]).dtype == np.int64
    x64 = mf.tensor(np.ones(3))
    assert x64.dtype == np.float64
    assert (x64 * 2.5 + 1).dtype == np.float64
    x32 = mf.tensor([1.0, 2.0], requires_grad=True)
    (x32 * 3.0).sum().backward()
    assert x32.grad.dtype == np.float32


def test_manual_seed_reproduces_bit_for_bit():
    mf.manual_seed(7)
    a = mf.randn(4, 5).numpy()
    mf.manual_seed(7)
    b = mf.randn(4, 5).numpy()
    mf.manual_seed(8)
    c = mf.randn(4, 5).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_comparisons_are_not_differentiable():
    x = mf.tensor([1.0, 2.0], requires_grad=True)
    mask = x > 1.5
    assert mask.dtype == np.bool_ and not mask.requires_grad


def test_tensor_hashes_by_identity():
    x, y = mf.tensor([1.0]), mf.tensor([1.0])
    assert len({x, y}) == 2


def test_ops_reusing_saved_buffers_still_allow_retain_graph():
    """Cross-entropy reuses its saved softmax as gradient buffer only when the graph dies."""
    logits = mf.tensor(np.random.default_rng(0).standard_normal((4, 5)), requires_grad=True)
    target = mf.tensor(np.array([0, 3, 1, 4]))
    loss = F.cross_entropy(logits, target)
    loss.backward(retain_graph=True)
    first = logits.grad.numpy().copy()
    loss.backward()
    np.testing.assert_allclose(logits.grad.numpy(), 2 * first, rtol=1e-12)


def test_graph_keeps_only_saved_arrays_alive():
    """Relu saves a mask, not its input: the linear output dies once no Tensor refers to it."""
    import gc
    import weakref

    x = mf.tensor(np.ones((4, 3)), requires_grad=True)
    w = mf.tensor(np.ones((3, 3)), requires_grad=True)
    h1 = F.linear(x, w)
    alive = weakref.ref(h1.data)
    h2 = F.relu(h1)
    del h1
    gc.collect()
    assert alive() is None
    h2.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), np.full((3, 3), 4.0))


def test_backward_frees_the_graph_even_if_the_loss_is_kept():
    import gc
    import weakref

    x = mf.tensor(np.ones((4, 3)), requires_grad=True)
    h = (x * 2.0).exp()
    alive = weakref.ref(h.data)
    loss = (h * h).sum()
    del h
    loss.backward()
    gc.collect()
    assert alive() is None and loss.item() > 0


def test_leaf_gradients_never_share_an_array():
    a = mf.tensor([1.0, 2.0], requires_grad=True)
    b = mf.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()
    assert a.grad.data is not b.grad.data
    a.grad.data *= 2  # writable and private
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])


def test_frozen_weight_keeps_no_input_alive():
    """Linear with a frozen weight saves nothing for dW: the activation is not kept for it."""
    x = mf.tensor(np.ones((4, 3)), requires_grad=True)
    w = mf.tensor(np.ones((2, 3)))
    y = F.linear(x, w)
    saved_x, saved_w = y._ctx.saved
    assert saved_x is None and saved_w is w.data
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((4, 3), 2.0))
