"""Row-wise kernels (softmax.cu, cross_entropy.cu, norm.cu, through backends/kernels/rowwise.py)
against NumPy formulas in float64 and against minift.functional in float32.

Every kernel test takes the ``kernels`` fixture: the CPU emulator here, the GPU where there is
one. Row lengths 1, 31, 33 (around a warp), 1000 (the register path's longest kind) and 5000
(a block per row) cover both launch shapes; long rows come in fewer rows, because the emulator
runs about one block per few milliseconds.
"""

import numpy as np
import pytest

import minift as mf
from backends.kernels import rowwise
from backends.kernels.loader import EmulatedKernels
from minift import functional as F

ROW_LENGTHS = [1, 31, 33, 1000, 5000]


def rows_for(n: int) -> int:
    return 6 if n <= 1024 else 3


def host(a) -> np.ndarray:
    """A kernel result as a NumPy array (CuPy arrays refuse implicit conversion)."""
    return a.get() if hasattr(a, "get") else a


def close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(host(actual), expected, rtol=rtol, atol=atol)


# --- NumPy references, float64 ------------------------------------------------------------------
def causal_visible(tq: int, tk: int) -> np.ndarray:
    """(Tq, Tk) bool: query i sees key j <= i + (Tk - Tq)."""
    return np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)


def softmax_ref(x, visible=None):
    s = x.astype(np.float64)
    if visible is not None:
        s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    total = e.sum(axis=-1, keepdims=True)
    return e / np.where(total > 0, total, 1)  # a row that sees nothing: zeros


def softmax_backward_ref(y, g):
    y, g = y.astype(np.float64), g.astype(np.float64)
    return y * (g - (g * y).sum(axis=-1, keepdims=True))


def cross_entropy_ref(z, t, w, ignore_index, eps):
    """(loss, lse, grad): the per-row loss, logsumexp, and w-weighted gradient; 0 if ignored."""
    z = z.astype(np.float64).reshape(-1, z.shape[-1])
    t, w = t.reshape(-1), w.astype(np.float64).reshape(-1)
    keep = t != ignore_index
    tt = np.where(keep, t, 0)
    rows, classes = np.arange(len(t)), z.shape[1]
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    loss = (1 - eps) * (lse - z[rows, tt]) + eps * (lse - z.mean(axis=1))
    target = np.full_like(z, eps / classes)
    target[rows, tt] += 1 - eps
    grad = (w * keep)[:, None] * (np.exp(z - lse[:, None]) - target)
    return loss * keep, lse, grad


def layer_norm_ref(x, w, b, eps, centred=True):
    """(y, mean, rstd, x_hat) with biased variance; RMS norm when not centred."""
    x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True) if centred else np.zeros(x.shape[:-1] + (1,))
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    x_hat = (x - mean) * rstd
    y = x_hat * (1 if w is None else w) + (0 if b is None else b)
    return y, mean[..., 0], rstd[..., 0], x_hat


def layer_norm_backward_ref(g, x_hat, rstd, w, centred=True):
    """(gx, gw, gb): rstd (g_hat - mean g_hat - x_hat mean(g_hat x_hat)), column sums."""
    g = g.astype(np.float64)
    g_hat = g * (1 if w is None else w)
    gx = g_hat - x_hat * (g_hat * x_hat).mean(axis=-1, keepdims=True)
    if centred:
        gx -= g_hat.mean(axis=-1, keepdims=True)
    lead = tuple(range(g.ndim - 1))
    return gx * rstd[..., None], (g * x_hat).sum(axis=lead), g.sum(axis=lead)


# --- softmax ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_softmax_forward_and_backward_match_numpy(kernels, rng, n):
    shape = (2, 3, n) if n <= 1024 else (rows_for(n), n)  # batch axes flattened into rows
    x = (4 * rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    y = rowwise.softmax(kernels, kernels.xp.asarray(x))
    close(y, softmax_ref(x))
    gx = rowwise.softmax_backward(kernels, y, kernels.xp.asarray(g))
    close(gx, softmax_backward_ref(host(y), g))


@pytest.mark.parametrize("tq, tk", [(1, 1), (5, 5), (3, 7), (2, 33), (4, 300), (6, 4), (3, 1100)])
def test_softmax_causal_mask_gives_exact_zeros(kernels, rng, tq, tk):
    batch = (2, 2) if tk <= 1024 else (1,)
    x = rng.standard_normal(batch + (tq, tk)).astype(np.float32)
    visible = causal_visible(tq, tk)
    y = host(rowwise.softmax(kernels, kernels.xp.asarray(x), causal=True))
    close(y, softmax_ref(x, visible))
    assert (y[..., ~visible] == 0).all()  # exactly zero, not tiny
    if tq > tk:  # queries that see no key at all: a row of zeros, never NaN
        assert (y[..., : tq - tk, :] == 0).all()
    g = rng.standard_normal(x.shape).astype(np.float32)
    gx = host(rowwise.softmax_backward(kernels, kernels.xp.asarray(y), kernels.xp.asarray(g)))
    close(gx, softmax_backward_ref(y, g))
    assert (gx[..., ~visible] == 0).all()


@pytest.mark.parametrize("n", [40, 1500])
def test_softmax_extreme_and_infinite_logits(kernels, rng, n):
    x = rng.choice(np.float32([-1e4, 1e4, 0.0, 9999.0]), size=(4, n)).astype(np.float32)
    x[1, :20] = -np.inf  # an additive mask: -inf entries first, where the running max is -inf
    x[2] = -1e4  # all equal and very negative
    y = host(rowwise.softmax(kernels, kernels.xp.asarray(x)))
    assert np.isfinite(y).all()
    close(y, softmax_ref(x))
    assert (y[1, :20] == 0).all()


def test_softmax_accepts_a_transposed_layout(kernels, rng):
    base = rng.standard_normal((2, 40, 7)).astype(np.float32)
    x = kernels.xp.asarray(base).swapaxes(-1, -2)  # (2, 7, 40), strided on the device
    y = rowwise.softmax(kernels, x, causal=True)
    close(y, softmax_ref(base.swapaxes(-1, -2), causal_visible(7, 40)))


def test_softmax_empty_inputs(kernels):
    for shape in [(0, 5), (3, 0)]:
        x = kernels.xp.zeros(shape, dtype=kernels.xp.float32)
        assert rowwise.softmax(kernels, x).shape == shape
        assert rowwise.softmax_backward(kernels, x, x).shape == shape


def test_softmax_rejects_bad_inputs(kernels):
    xp = kernels.xp
    with pytest.raises(TypeError, match="float32, got float64"):
        rowwise.softmax(kernels, xp.zeros((2, 3)))
    with pytest.raises(TypeError, match="must be a"):
        rowwise.softmax(kernels, [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"causal needs scores of shape \(\.\.\., Tq, Tk\)"):
        rowwise.softmax(kernels, xp.zeros(4, dtype=xp.float32), causal=True)
    with pytest.raises(ValueError, match="0-d"):
        rowwise.softmax(kernels, xp.zeros((), dtype=xp.float32))
    with pytest.raises(ValueError, match=r"g must have shape \(2, 3\), got \(3, 2\)"):
        y = xp.zeros((2, 3), dtype=xp.float32)
        rowwise.softmax_backward(kernels, y, xp.zeros((3, 2), dtype=xp.float32))


# --- cross-entropy ------------------------------------------------------------------------------
def run_cross_entropy(kernels, z, t, w, ignore_index=-100, eps=0.0):
    """The kernels' (loss, lse, grad) as NumPy arrays."""
    xp = kernels.xp
    z_dev, t_dev = xp.asarray(z), xp.asarray(t)
    loss, lse = rowwise.cross_entropy(kernels, z_dev, t_dev, ignore_index, eps)
    grad = rowwise.cross_entropy_backward(
        kernels, z_dev, t_dev, lse, xp.asarray(w), ignore_index, eps
    )
    return host(loss), host(lse), host(grad)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("classes", ROW_LENGTHS)
def test_cross_entropy_matches_numpy(kernels, rng, classes, eps):
    rows = rows_for(classes)
    z = (3 * rng.standard_normal((rows, classes))).astype(np.float32)
    t = rng.integers(0, classes, rows)
    t[1] = -100
    w = rng.standard_normal(rows).astype(np.float32)
    loss, lse, grad = run_cross_entropy(kernels, z, t, w, eps=eps)
    ref_loss, ref_lse, ref_grad = cross_entropy_ref(z, t, w, -100, eps)
    close(loss, ref_loss, atol=1e-5)
    keep = t != -100
    close(lse[keep], ref_lse[keep], atol=1e-5)
    close(grad, ref_grad)
    assert loss[1] == 0 and (grad[1] == 0).all()


def test_cross_entropy_matches_minift_with_batch_axes(kernels, rng):
    """(B, T, C) logits with ignored positions and smoothing, against F.cross_entropy."""
    z = rng.standard_normal((2, 3, 50)).astype(np.float32)
    t = rng.integers(0, 50, (2, 3))
    t[0, 1] = t[1, 2] = 7  # this call's ignore_index
    t[0, 0] = 3
    w = rng.standard_normal((2, 3)).astype(np.float32)
    loss, lse, grad = run_cross_entropy(kernels, z, t, w, ignore_index=7, eps=0.2)
    logits = mf.tensor(z, requires_grad=True)
    expected = F.cross_entropy(logits, t, ignore_index=7, label_smoothing=0.2, reduction="none")
    expected.backward(w)
    close(loss, expected.numpy())
    close(grad, logits.grad.numpy())
    assert loss.shape == lse.shape == (2, 3)


def test_cross_entropy_over_a_gpt2_vocabulary(kernels, rng):
    z = (2 * rng.standard_normal((3, 50257))).astype(np.float32)
    t = np.array([50256, -100, 0])
    w = np.full(3, 0.5, dtype=np.float32)
    loss, lse, grad = run_cross_entropy(kernels, z, t, w, eps=0.1)
    ref_loss, ref_lse, ref_grad = cross_entropy_ref(z, t, w, -100, 0.1)
    close(loss, ref_loss, atol=1e-5)
    close(lse[[0, 2]], ref_lse[[0, 2]])
    close(grad, ref_grad, atol=1e-7)


@pytest.mark.parametrize("classes", [40, 1500])
def test_cross_entropy_extreme_logits(kernels, rng, classes):
    z = rng.choice(np.float32([-1e4, 1e4, 0.0, 9999.5]), size=(4, classes)).astype(np.float32)
    z[:, 0], z[:, 1] = 1e4, -1e4
    t = np.array([0, 1, 2, 1])  # the largest logit, the smallest, others
    w = np.ones(4, dtype=np.float32)
    loss, lse, grad = run_cross_entropy(kernels, z, t, w, eps=0.1)
    assert np.isfinite(loss).all() and np.isfinite(lse).all() and np.isfinite(grad).all()
    ref_loss, ref_lse, ref_grad = cross_entropy_ref(z, t, w, -100, 0.1)
    close(loss, ref_loss, rtol=1e-6, atol=2e-3)  # ulp(1e4) is ~1e-3
    close(lse, ref_lse, rtol=1e-6, atol=2e-3)
    close(grad, ref_grad, atol=1e-3)  # p = exp(z - lse) inherits lse's rounding


def test_cross_entropy_every_row_ignored(kernels, rng):
    z = rng.standard_normal((3, 10)).astype(np.float32)
    t = np.full(3, -100)
    loss, _, grad = run_cross_entropy(kernels, z, t, np.ones(3, dtype=np.float32), eps=0.3)
    assert (loss == 0).all() and (grad == 0).all()


def test_cross_entropy_accepts_a_transposed_layout_and_int32_targets(kernels, rng):
    base = rng.standard_normal((33, 5)).astype(np.float32)
    xp = kernels.xp
    z, t = xp.asarray(base).T, xp.asarray(rng.integers(0, 33, 5).astype(np.int32))  # (5, 33)
    w = rng.standard_normal(5).astype(np.float32)
    loss, lse = rowwise.cross_entropy(kernels, z, t)
    grad = rowwise.cross_entropy_backward(kernels, z, t, lse, xp.asarray(w))
    ref_loss, _, ref_grad = cross_entropy_ref(base.T, host(t), w, -100, 0.0)
    close(loss, ref_loss)
    close(grad, ref_grad)


def test_cross_entropy_rejects_bad_inputs(kernels):
    xp = kernels.xp
    z = xp.zeros((3, 5), dtype=xp.float32)
    t = xp.asarray(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target value 5 is out of range \[0, 5\)"):
        rowwise.cross_entropy(kernels, z, xp.asarray(np.array([0, 5, 1])))
    with pytest.raises(ValueError, match="target value -1 is out of range"):
        rowwise.cross_entropy(kernels, z, xp.asarray(np.array([0, -1, 1])))
    with pytest.raises(TypeError, match="integer array of class indices"):
        rowwise.cross_entropy(kernels, z, xp.zeros(3, dtype=xp.float32))
    with pytest.raises(ValueError, match=r"target shape \(2,\) must be logits shape"):
        rowwise.cross_entropy(kernels, z, t[:2])
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        rowwise.cross_entropy(kernels, z, t, label_smoothing=1.5)
    with pytest.raises(TypeError, match="logits must be float32"):
        rowwise.cross_entropy(kernels, z.astype(xp.float64), t)
    with pytest.raises(ValueError, match="at least one class|>= 1 class"):
        rowwise.cross_entropy(kernels, xp.zeros((3, 0), dtype=xp.float32), t)
    _, lse = rowwise.cross_entropy(kernels, z, t)
    with pytest.raises(ValueError, match=r"grad_rows must have shape \(3,\)"):
        rowwise.cross_entropy_backward(kernels, z, t, lse, xp.ones(4, dtype=xp.float32))
    with pytest.raises(ValueError, match="target value 9 is out of range"):
        bad = xp.asarray(np.array([0, 9, 1]))
        rowwise.cross_entropy_backward(kernels, z, bad, lse, xp.ones(3, dtype=xp.float32))


# --- layer norm and RMS norm ----------------------------------------------------------------------
def run_layer_norm(kernels, x, w, b, g, eps=1e-5):
    xp = kernels.xp
    dev = [None if a is None else xp.asarray(a) for a in (x, w, b, g)]
    y, mean, rstd = rowwise.layer_norm(kernels, dev[0], dev[1], dev[2], eps)
    gx, gw, gb = rowwise.layer_norm_backward(kernels, dev[3], dev[0], dev[1], mean, rstd)
    return [host(a) for a in (y, mean, rstd, gx, gw, gb)]


def run_rms_norm(kernels, x, w, g, eps=1e-6):
    xp = kernels.xp
    x_dev, w_dev, g_dev = (None if a is None else xp.asarray(a) for a in (x, w, g))
    y, rstd = rowwise.rms_norm(kernels, x_dev, w_dev, eps)
    gx, gw = rowwise.rms_norm_backward(kernels, g_dev, x_dev, w_dev, rstd)
    return [host(a) for a in (y, rstd, gx, gw)]


def norm_inputs(rng, shape, affine: bool, offset: float = 0.0):
    dim = shape[-1]
    x = (offset + 2 * rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32) if affine else None
    b = rng.standard_normal(dim).astype(np.float32) if affine else None
    return x, w, b, g


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-weight-bias"])
@pytest.mark.parametrize("dim", ROW_LENGTHS)
def test_layer_norm_matches_numpy(kernels, rng, dim, affine):
    shape = (2, 3, dim) if dim <= 1024 else (rows_for(dim), dim)
    x, w, b, g = norm_inputs(rng, shape, affine, offset=3.0)
    y, mean, rstd, gx, gw, gb = run_layer_norm(kernels, x, w, b, g)
    ref_y, ref_mean, ref_rstd, x_hat = layer_norm_ref(x, w, b, 1e-5)
    close(y, ref_y, atol=1e-5)
    close(mean, ref_mean, atol=1e-6)
    close(rstd, ref_rstd)
    ref_gx, ref_gw, ref_gb = layer_norm_backward_ref(g, x_hat, ref_rstd, w)
    close(gx, ref_gx, atol=1e-5)
    close(gw, ref_gw, atol=1e-5)
    close(gb, ref_gb, atol=1e-5)


@pytest.mark.parametrize("affine", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("dim", ROW_LENGTHS)
def test_rms_norm_matches_numpy(kernels, rng, dim, affine):
    shape = (2, 3, dim) if dim <= 1024 else (rows_for(dim), dim)
    x, w, _, g = norm_inputs(rng, shape, affine, offset=1.0)
    y, rstd, gx, gw = run_rms_norm(kernels, x, w, g)
    ref_y, _, ref_rstd, x_hat = layer_norm_ref(x, w, None, 1e-6, centred=False)
    close(y, ref_y, atol=1e-5)
    close(rstd, ref_rstd)
    ref_gx, ref_gw, _ = layer_norm_backward_ref(g, x_hat, ref_rstd, w, centred=False)
    close(gx, ref_gx, atol=1e-5)
    close(gw, ref_gw, atol=1e-5)


def test_norms_match_minift_functional(kernels, rng):
    x, w, b, g = norm_inputs(rng, (2, 3, 40), affine=True)
    tensors = [mf.tensor(a, requires_grad=True) for a in (x, w, b)]
    F.layer_norm(tensors[0], 40, tensors[1], tensors[2], eps=1e-5).backward(g)
    y, _, _, gx, gw, gb = run_layer_norm(kernels, x, w, b, g)
    expected_y = F.layer_norm(mf.tensor(x), 40, mf.tensor(w), mf.tensor(b), eps=1e-5).numpy()
    close(y, expected_y, atol=1e-5)
    for ours, t in zip((gx, gw, gb), tensors):
        close(ours, t.grad.numpy(), atol=1e-5)

    tensors = [mf.tensor(a, requires_grad=True) for a in (x, w)]
    out = F.rms_norm(tensors[0], 40, tensors[1], eps=1e-6)
    out.backward(g)
    y, _, gx, gw = run_rms_norm(kernels, x, w, g)
    close(y, out.numpy(), atol=1e-5)
    close(gx, tensors[0].grad.numpy(), atol=1e-5)
    close(gw, tensors[1].grad.numpy(), atol=1e-5)


def test_norm_parameter_gradients_over_several_slices(kernels, rng):
    rows = 2 * rowwise.PARAM_GRAD_SLICE_ROWS + 22  # three slices, the last one short
    x, w, b, g = norm_inputs(rng, (rows, 24), affine=True)  # one warp a row: cheap to emulate
    *_, gw, gb = run_layer_norm(kernels, x, w, b, g)
    _, _, rstd, x_hat = layer_norm_ref(x, w, b, 1e-5)
    _, ref_gw, ref_gb = layer_norm_backward_ref(g, x_hat, rstd, w)
    close(gw, ref_gw, atol=1e-5)
    close(gb, ref_gb, atol=1e-5)


def test_norm_rows_of_8192(kernels, rng):
    x, w, b, g = norm_inputs(rng, (2, 8192), affine=True)
    y, _, _, gx, *_ = run_layer_norm(kernels, x, w, b, g)
    ref_y, _, ref_rstd, x_hat = layer_norm_ref(x, w, b, 1e-5)
    close(y, ref_y, atol=1e-5)
    close(gx, layer_norm_backward_ref(g, x_hat, ref_rstd, w)[0], atol=1e-5)


def test_layer_norm_variance_is_two_pass(kernels, rng):
    """x = 1e4 + N(0, 1): sum x^2 / D - mean^2 would cancel to garbage in float32."""
    x = (1e4 + rng.standard_normal((4, 300))).astype(np.float32)
    y, _, rstd, *_ = run_layer_norm(kernels, x, None, None, np.zeros_like(x))
    ref_y, _, ref_rstd, _ = layer_norm_ref(x, None, None, 1e-5)
    close(rstd, ref_rstd, rtol=1e-4)
    close(y, ref_y, atol=1e-3)


def test_norm_backward_skips_unneeded_parameter_gradients(kernels, rng):
    xp = kernels.xp
    x, w, b, g = (xp.asarray(a) for a in norm_inputs(rng, (3, 40), affine=True))
    _, mean, rstd = rowwise.layer_norm(kernels, x, w, b, 1e-5)
    _, gw, gb = rowwise.layer_norm_backward(kernels, g, x, w, mean, rstd, need_bias=False)
    assert gw is not None and gb is None
    _, gw, gb = rowwise.layer_norm_backward(kernels, g, x, w, mean, rstd, need_weight=False)
    assert gw is None and gb is not None
    _, rstd = rowwise.rms_norm(kernels, x, w, 1e-6)
    assert rowwise.rms_norm_backward(kernels, g, x, w, rstd, need_weight=False)[1] is None


def test_norms_of_no_rows(kernels):
    x = kernels.xp.zeros((0, 8), dtype=kernels.xp.float32)
    y, mean, rstd = rowwise.layer_norm(kernels, x, None, None, 1e-5)
    assert y.shape == (0, 8) and mean.shape == rstd.shape == (0,)
    gx, gw, gb = rowwise.layer_norm_backward(kernels, x, x, None, mean, rstd)
    assert gx.shape == (0, 8) and (host(gw) == 0).all() and (host(gb) == 0).all()


def test_norms_reject_bad_inputs(kernels):
    xp = kernels.xp
    x = xp.zeros((3, 8), dtype=xp.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\), got \(7,\)"):
        rowwise.layer_norm(kernels, x, xp.ones(7, dtype=xp.float32), None, 1e-5)
    with pytest.raises(TypeError, match="bias must be float32"):
        rowwise.layer_norm(kernels, x, None, xp.zeros(8), 1e-5)
    with pytest.raises(ValueError, match="last\\) axis is empty"):
        rowwise.rms_norm(kernels, xp.zeros((3, 0), dtype=xp.float32), None, 1e-6)
    y, mean, rstd = rowwise.layer_norm(kernels, x, None, None, 1e-5)
    with pytest.raises(ValueError, match=r"mean must have shape \(3,\), got \(2,\)"):
        rowwise.layer_norm_backward(kernels, y, x, None, mean[:2], rstd)
    with pytest.raises(ValueError, match=r"g must have shape \(3, 8\)"):
        rowwise.rms_norm_backward(kernels, y[:2], x, None, rstd)


# --- larger sizes, on the GPU only -----------------------------------------------------------------
def test_model_sized_rows_on_the_gpu(kernels, rng):
    if isinstance(kernels, EmulatedKernels):
        pytest.skip("model-sized launches take minutes in the emulator")
    xp = kernels.xp
    x = rng.standard_normal((2, 4, 512, 512)).astype(np.float32)
    y = rowwise.softmax(kernels, xp.asarray(x), causal=True)
    close(y, softmax_ref(x, causal_visible(512, 512)))
    x = rng.standard_normal((64, 3000)).astype(np.float32)
    close(rowwise.softmax(kernels, xp.asarray(x)), softmax_ref(x))
    z = (2 * rng.standard_normal((512, 50257))).astype(np.float32)
    t = rng.integers(0, 50257, 512)
    t[::7] = -100
    w = rng.standard_normal(512).astype(np.float32)
    loss, lse, grad = run_cross_entropy(kernels, z, t, w, eps=0.1)
    ref_loss, ref_lse, ref_grad = cross_entropy_ref(z, t, w, -100, 0.1)
    close(loss, ref_loss, atol=1e-5)
    close(lse[t != -100], ref_lse[t != -100], atol=1e-5)
    close(grad, ref_grad, atol=1e-7)
    x, w, b, g = norm_inputs(rng, (8192, 768), affine=True)
    y, _, _, gx, gw, gb = run_layer_norm(kernels, x, w, b, g)
    ref_y, _, rstd, x_hat = layer_norm_ref(x, w, b, 1e-5)
    close(y, ref_y, atol=1e-5)
    for ours, ref in zip((gx, gw, gb), layer_norm_backward_ref(g, x_hat, rstd, w)):
        close(ours, ref, rtol=1e-4, atol=1e-3)  # column sums over 8192 rows
