"""Fused norm, loss and attention ops: against their composites of primitives, against PyTorch
(stored fixture), and the semantics the catalogue cannot express (running statistics, ignored
targets, empty attention rows, error messages)."""

import json
from pathlib import Path

import numpy as np
import pytest

import minift as mf
from minift import functional as F

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torch_ops.json").read_text())
TORCH = FIXTURE["cases"]


def run(fn, arrays, differentiate=None, cotangent=None, seed=0):
    """Output and input gradients of <fn(*arrays), cotangent>, all as NumPy float64."""
    inputs = [
        mf.tensor(
            a,
            requires_grad=(differentiate is None or i in differentiate)
            and np.asarray(a).dtype.kind == "f",
        )
        for i, a in enumerate(arrays)
    ]
    out = fn(*inputs)
    if cotangent is None:
        cotangent = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(np.asarray(cotangent, dtype=out.dtype))
    grads = [t.grad.numpy() if t.grad is not None else None for t in inputs]
    return out.numpy(), grads


def assert_same(fused, composite, rtol=1e-10, atol=1e-12):
    (out_a, grads_a), (out_b, grads_b) = fused, composite
    np.testing.assert_allclose(out_a, out_b, rtol=rtol, atol=atol)
    for ga, gb in zip(grads_a, grads_b):
        if gb is not None:
            np.testing.assert_allclose(ga, gb, rtol=rtol, atol=atol)


# --- fused == composite of primitives ----------------------------------------------------------
def composite_layer_norm(x, w, b, eps=1e-5):
    mean = F.mean(x, axis=-1, keepdims=True)
    var = F.var(x, axis=-1, keepdims=True, correction=0)
    return (x - mean) / F.sqrt(var + eps) * w + b


def composite_rms_norm(x, w, eps=1e-6):
    return x / F.sqrt(F.mean(x * x, axis=-1, keepdims=True) + eps) * w


def composite_batch_norm_train(x, w, b, eps=1e-5):
    mean = F.mean(x, axis=(0, 2, 3), keepdims=True)
    var = F.var(x, axis=(0, 2, 3), keepdims=True, correction=0)
    return (x - mean) / F.sqrt(var + eps) * F.reshape(w, (1, -1, 1, 1)) + F.reshape(
        b, (1, -1, 1, 1)
    )


def composite_log_softmax(z):
    shifted = z - F.max(z, axis=-1, keepdims=True)
    return shifted - F.log(F.sum(F.exp(shifted), axis=-1, keepdims=True))


def composite_softmax_attention(q, k, v, bias):
    scores = F.matmul(q, F.transpose(k, -1, -2)) * (q.shape[-1] ** -0.5) + bias
    e = F.exp(scores - F.max(scores, axis=-1, keepdims=True))
    return F.matmul(e / F.sum(e, axis=-1, keepdims=True), v)


def test_layer_norm_equals_composite(rng):
    arrays = [
        rng.standard_normal((4, 3, 8)) * 3 + 1,
        rng.standard_normal(8),
        rng.standard_normal(8),
    ]
    fused = run(lambda x, w, b: F.layer_norm(x, 8, w, b), arrays)
    assert_same(fused, run(composite_layer_norm, arrays))


def test_rms_norm_equals_composite(rng):
    arrays = [rng.standard_normal((4, 3, 8)), rng.standard_normal(8)]
    assert_same(run(lambda x, w: F.rms_norm(x, 8, w), arrays), run(composite_rms_norm, arrays))


def test_batch_norm_train_equals_composite(rng):
    arrays = [rng.standard_normal((3, 4, 2, 5)), rng.standard_normal(4), rng.standard_normal(4)]
    fused = run(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), arrays)
    assert_same(fused, run(composite_batch_norm_train, arrays))


def test_cross_entropy_equals_composite(rng):
    z, t = rng.standard_normal((2, 5, 7)), rng.integers(0, 7, (2, 5))
    t[0, :2] = -100
    eps, keep = 0.15, t != -100
    q = np.where(keep[..., None], (1 - eps) * np.eye(7)[np.where(keep, t, 0)] + eps / 7, 0.0)

    def composite(z):
        return -F.sum(q * composite_log_softmax(z)) / int(keep.sum())

    fused = run(lambda z, t: F.cross_entropy(z, t, label_smoothing=eps), [z, t])
    assert_same(fused, run(composite, [z]))


def test_bce_with_logits_equals_composite(rng):
    x, y, pw = rng.standard_normal((4, 3)) * 2, rng.uniform(0, 1, (4, 3)), rng.uniform(0.5, 3, 3)

    def composite(x, y, pw):
        return F.mean((1 - y) * x + (1 + (pw - 1) * y) * F.log(1 + F.exp(-x)))

    fused = run(F.binary_cross_entropy_with_logits, [x, y, pw])
    assert_same(fused, run(composite, [x, y, pw]))


def test_mse_equals_composite(rng):
    arrays = [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))]
    assert_same(run(F.mse_loss, arrays), run(lambda a, b: F.mean((a - b) * (a - b)), arrays))


@pytest.mark.parametrize("lq, lk", [(4, 4), (2, 6)])
def test_causal_attention_equals_composite(rng, lq, lk):
    arrays = [
        rng.standard_normal((2, 3, lq, 4)),
        rng.standard_normal((2, 3, lk, 4)),
        rng.standard_normal((2, 3, lk, 5)),
    ]
    bias = np.where(np.tril(np.ones((lq, lk), dtype=bool), k=lk - lq), 0.0, -np.inf)
    fused = run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), arrays)
    composite = run(lambda q, k, v: composite_softmax_attention(q, k, v, bias), arrays)
    assert_same(fused, composite)


# --- PyTorch 2.13 reference values (tests/fixtures/make_torch_ops.py) ---------------------------
def check_torch(name, fn, names):
    case = TORCH[name]
    arrays = [np.asarray(case["inputs"][n]) for n in names]
    out, grads = run(
        fn,
        arrays,
        differentiate=[names.index(n) for n in case["grads"]],
        cotangent=np.asarray(case["cotangent"]),
    )
    np.testing.assert_allclose(out, case["output"], rtol=1e-10, atol=1e-10)
    for n, expected in case["grads"].items():
        np.testing.assert_allclose(grads[names.index(n)], expected, rtol=1e-10, atol=1e-10)
    return case


def test_fixture_provenance():
    provenance = FIXTURE["provenance"]
    assert provenance["library"].startswith("torch 2.13.0") and provenance["dtype"] == "float64"


def test_torch_cross_entropy_ignore_index_label_smoothing():
    params = TORCH["cross_entropy_ignore_smoothing"]["params"]
    check_torch(
        "cross_entropy_ignore_smoothing",
        lambda z, t: F.cross_entropy(z, t, **params),
        ["logits", "target"],
    )


def test_torch_layer_norm_and_rms_norm():
    check_torch(
        "layer_norm", lambda x, w, b: F.layer_norm(x, 4, w, b, eps=1e-5), ["x", "weight", "bias"]
    )
    check_torch("rms_norm", lambda x, w: F.rms_norm(x, 4, w, eps=1e-6), ["x", "weight"])


@pytest.mark.parametrize("name", ["batch_norm_train", "batch_norm_eval"])
def test_torch_batch_norm_with_running_stats(name):
    params = TORCH[name]["params"]
    running_mean = mf.tensor(np.asarray(params["running_mean"]))
    running_var = mf.tensor(np.asarray(params["running_var"]))

    def fn(x, w, b):
        return F.batch_norm(
            x,
            running_mean,
            running_var,
            w,
            b,
            training=params["training"],
            momentum=params["momentum"],
            eps=params["eps"],
        )

    case = check_torch(name, fn, ["x", "weight", "bias"])
    np.testing.assert_allclose(running_mean.numpy(), case["running_after"]["mean"], rtol=1e-10)
    np.testing.assert_allclose(running_var.numpy(), case["running_after"]["var"], rtol=1e-10)


def test_torch_bce_with_logits_pos_weight():
    check_torch(
        "bce_with_logits_pos_weight",
        F.binary_cross_entropy_with_logits,
        ["logits", "target", "pos_weight"],
    )


def test_torch_attention_causal_and_bool_mask():
    sdpa = F.scaled_dot_product_attention
    check_torch("sdpa_causal", lambda q, k, v: sdpa(q, k, v, is_causal=True), ["q", "k", "v"])
    check_torch("sdpa_bool_mask", sdpa, ["q", "k", "v", "attn_mask"])


def test_torch_bottom_right_causal_matches_is_causal():
    """PyTorch got an explicit bottom-right mask; minift gets is_causal=True and Lk > Lq."""
    check_torch(
        "sdpa_bottom_right_causal",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        ["q", "k", "v"],
    )


# --- semantics --------------------------------------------------------------------------------
def test_batch_norm_running_stats_update_in_place(rng):
    x = rng.standard_normal((4, 3, 2, 2))
    running_mean, running_var = mf.zeros(3, dtype="float64"), mf.ones(3, dtype="float64")
    buffers = running_mean.data, running_var.data
    F.batch_norm(mf.tensor(x), running_mean, running_var, training=True, momentum=0.2)
    assert running_mean.data is buffers[0] and running_var.data is buffers[1]
    np.testing.assert_allclose(running_mean.numpy(), 0.2 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(running_var.numpy(), 0.8 + 0.2 * x.var(axis=(0, 2, 3), ddof=1))


def test_batch_norm_eval_leaves_running_stats_and_ignores_batch(rng):
    running_mean, running_var = mf.tensor([1.0, -1.0]), mf.tensor([4.0, 0.25])
    x = mf.tensor(rng.standard_normal((3, 2)).astype(np.float32))
    y = F.batch_norm(x, running_mean, running_var, eps=0.0)
    np.testing.assert_allclose(y.numpy(), (x.numpy() - [1, -1]) / [2, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(running_mean.numpy(), [1.0, -1.0])
    assert y.dtype == np.float32


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient():
    """As PyTorch 2.13: the mean over zero kept targets is 0/0 = NaN; no row sends a gradient."""
    z = mf.tensor(np.ones((3, 4)), requires_grad=True)
    loss = F.cross_entropy(z, np.full(3, -100))
    assert np.isnan(loss.item())
    loss.backward()
    np.testing.assert_array_equal(z.grad.numpy(), 0.0)


def test_cross_entropy_ignored_rows_get_zero_gradient_and_mean_over_kept(rng):
    z = mf.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    t = np.array([0, -100, 2, -100])
    loss = F.cross_entropy(z, t)
    loss.backward()
    kept = F.cross_entropy(mf.tensor(z.numpy()[[0, 2]]), t[[0, 2]])
    np.testing.assert_allclose(loss.item(), kept.item(), rtol=1e-12)
    np.testing.assert_array_equal(z.grad.numpy()[[1, 3]], 0.0)


def test_losses_are_stable_for_huge_logits_in_float32():
    z = mf.tensor(np.array([[1e4, -1e4, 0.0]], dtype=np.float32), requires_grad=True)
    loss = F.cross_entropy(z, np.array([1]), label_smoothing=0.1)
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(z.grad.numpy()).all()
    assert z.grad.dtype == np.float32
    x = mf.tensor(np.array([1e4, -1e4], dtype=np.float32), requires_grad=True)
    bce = F.binary_cross_entropy_with_logits(x, np.array([0.0, 1.0], dtype=np.float32))
    bce.backward()
    np.testing.assert_allclose(bce.item(), 1e4, rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), [0.5, -0.5])


def test_fully_masked_attention_rows_are_zero_not_nan(rng):
    q, k, v = (mf.tensor(rng.standard_normal((2, 3, 4)), requires_grad=True) for _ in range(3))
    mask = np.ones((3, 3), dtype=bool)
    mask[1] = False
    out = F.scaled_dot_product_attention(q, k, v, mask)
    out.sum().backward()
    np.testing.assert_array_equal(out.numpy()[:, 1], 0.0)
    for t in (q, k, v):
        assert np.isfinite(t.grad.numpy()).all()
    np.testing.assert_array_equal(q.grad.numpy()[:, 1], 0.0)
    float_mask = np.where(mask, 0.0, -np.inf)
    again = F.scaled_dot_product_attention(q, k, v, float_mask)
    np.testing.assert_allclose(again.numpy(), out.numpy(), rtol=1e-12)


def test_causal_with_more_queries_than_keys_zeros_the_first_rows(rng):
    q, k, v = rng.standard_normal((4, 2)), rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    out = F.scaled_dot_product_attention(mf.tensor(q), mf.tensor(k), mf.tensor(v), is_causal=True)
    np.testing.assert_array_equal(out.numpy()[:2], 0.0)  # query i sees keys j <= i - 2
    np.testing.assert_allclose(out.numpy()[2], v[0])


def test_kv_cache_step_equals_last_row_of_full_causal(rng):
    """One new query against all cached keys == the last row of full causal attention."""
    q, k, v = (mf.tensor(rng.standard_normal((2, 5, 4))) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    step = F.scaled_dot_product_attention(q[:, 4:], k, v, is_causal=True)
    np.testing.assert_allclose(step.numpy(), full.numpy()[:, 4:], rtol=1e-5)


def test_backward_leaves_the_incoming_gradient_untouched(rng):
    q, k, v = (mf.tensor(rng.standard_normal((2, 3, 4)), requires_grad=True) for _ in range(3))
    z = mf.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    x = mf.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    for out in (
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        F.cross_entropy(z, np.array([0, 1, 2]), reduction="none", label_smoothing=0.1),
        F.layer_norm(x, 4),
        F.rms_norm(x, 4),
    ):
        grad = rng.standard_normal(out.shape)
        kept = grad.copy()
        out.backward(grad)
        np.testing.assert_array_equal(grad, kept)


def test_float32_gradients_stay_float32(rng):
    x = mf.tensor(rng.standard_normal((2, 3, 4)).astype(np.float32), requires_grad=True)
    w = mf.tensor(np.ones(4, dtype=np.float32), requires_grad=True)
    loss = F.sum(F.layer_norm(x, 4, w) * F.rms_norm(x, 4, w))
    loss = loss + F.sum(F.scaled_dot_product_attention(x, x, x, is_causal=True))
    loss.backward()
    assert loss.dtype == x.grad.dtype == w.grad.dtype == np.float32


def test_no_graph_is_kept_without_gradients(rng):
    x = mf.tensor(rng.standard_normal((2, 3, 4)))
    assert F.layer_norm(x, 4)._ctx is None
    with mf.no_grad():
        z = mf.tensor(rng.standard_normal((2, 3)), requires_grad=True)
        assert F.cross_entropy(z, np.array([0, 2])).requires_grad is False


# --- bad input fails early, naming the problem -------------------------------------------------
def test_norm_errors():
    x = mf.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"normalized_shape \(3,\) must match .* \(2, 3, 4\)"):
        F.layer_norm(x, 3)
    with pytest.raises(ValueError, match="rms_norm: weight has shape"):
        F.rms_norm(x, 4, mf.ones(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(mf.zeros(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="evaluation .* needs running_mean"):
        F.batch_norm(x, None, None)
    with pytest.raises(TypeError, match="momentum must be a number"):
        F.batch_norm(x, mf.zeros(3), mf.ones(3), training=True, momentum=None)
    with pytest.raises(ValueError, match=r"running_mean has shape \(4,\), expected \(3,\)"):
        F.batch_norm(x, mf.zeros(4), mf.ones(4))


def test_cross_entropy_errors():
    z = mf.zeros(2, 3, 5)
    with pytest.raises(ValueError, match="target value 7 is out of range"):
        F.cross_entropy(z, np.array([[0, 1, 7], [0, 0, 0]]))
    with pytest.raises(ValueError, match="target value -1 is out of range"):
        F.cross_entropy(z, np.array([[0, -1, -100], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"target shape \(2, 5\) must be logits shape"):
        F.cross_entropy(z, np.zeros((2, 5), dtype=int))
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(z, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(z, np.zeros((2, 3), dtype=int), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(z, np.zeros((2, 3), dtype=int), label_smoothing=1.5)


def test_regression_loss_errors():
    with pytest.raises(ValueError, match=r"mse_loss: target shape \(3, 1\) != input shape \(3,\)"):
        F.mse_loss(mf.zeros(3), mf.zeros(3, 1))
    with pytest.raises(ValueError, match="target shape"):
        F.binary_cross_entropy_with_logits(mf.zeros(2, 3), mf.zeros(3))
    with pytest.raises(ValueError, match=r"pos_weight shape \(2,\) does not broadcast"):
        F.binary_cross_entropy_with_logits(mf.zeros(2, 3), mf.zeros(2, 3), mf.ones(2))


def test_attention_errors():
    q = mf.zeros(2, 4, 3, 8)
    with pytest.raises(ValueError, match="repeat the k/v heads"):
        F.scaled_dot_product_attention(q, mf.zeros(2, 2, 3, 8), mf.zeros(2, 2, 3, 8))
    with pytest.raises(ValueError, match="head sizes differ: 8 vs 4"):
        F.scaled_dot_product_attention(q, mf.zeros(2, 4, 3, 4), mf.zeros(2, 4, 3, 4))
    with pytest.raises(ValueError, match="k and v have 3 and 5 positions"):
        F.scaled_dot_product_attention(q, q, mf.zeros(2, 4, 5, 8))
    with pytest.raises(ValueError, match=r"attn_mask shape \(3, 4\) does not broadcast"):
        F.scaled_dot_product_attention(q, q, q, np.ones((3, 4), dtype=bool))
    with pytest.raises(TypeError, match="boolean"):
        F.scaled_dot_product_attention(q, q, q, np.ones((3, 3), dtype=int))
