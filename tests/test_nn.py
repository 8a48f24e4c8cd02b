"""minift.nn: registration and naming, state dicts, modes, moving, initialisation, and float64
gradient checks of every layer; a PyTorch fixture pins the attention head layout."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

import minift as mf
from minift import functional as F
from minift import nn
from minift.nn import init

FIXTURES = Path(__file__).parent / "fixtures"


class Block(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.register_buffer("mask", mf.ones(dim))
        self.register_buffer("cache", mf.zeros(dim), persistent=False)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TinyModel(nn.Module):
    """Embedding tied to the output head, as in GPT-2."""

    def __init__(self, vocab: int = 7, dim: int = 4) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.wte.weight
        self.scale = nn.Parameter(mf.ones(1))

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x) * self.scale


def _f64(module):
    return module.to(dtype="float64")


def _randn(*shape, seed=0):
    return mf.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


# --- registration and naming ------------------------------------------------------------------
def test_named_parameters_are_dotted_and_shared_parameter_counted_once():
    model = TinyModel()
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "scale",
        "wte.weight",
        "blocks.0.norm.weight",
        "blocks.0.norm.bias",
        "blocks.0.mlp.0.weight",
        "blocks.0.mlp.0.bias",
        "blocks.0.mlp.2.weight",
        "blocks.0.mlp.2.bias",
        "blocks.1.norm.weight",
        "blocks.1.norm.bias",
        "blocks.1.mlp.0.weight",
        "blocks.1.mlp.0.bias",
        "blocks.1.mlp.2.weight",
        "blocks.1.mlp.2.bias",
    ]
    assert model.head.weight is model.wte.weight
    block = 4 + 4 + (4 * 8 + 8) + (8 * 4 + 4)
    assert model.num_parameters() == 1 + 7 * 4 + 2 * block
    assert len(list(model.parameters())) == len(names)


def test_modules_children_and_buffers():
    model = TinyModel()
    assert [n for n, _ in model.named_children()] == ["wte", "blocks", "head"]
    names = [n for n, _ in model.named_modules()]
    assert names[:4] == ["", "wte", "blocks", "blocks.0"] and "blocks.1.mlp.2" in names
    assert len(list(model.modules())) == len(names)
    assert [n for n, _ in model.named_buffers()] == [
        "blocks.0.mask",
        "blocks.0.cache",
        "blocks.1.mask",
        "blocks.1.cache",
    ]
    assert len(list(model.buffers())) == 4
    assert model.get_submodule("blocks.1.mlp.0") is model.blocks[1].mlp[0]
    with pytest.raises(AttributeError, match="no submodule 'nope'"):
        model.get_submodule("blocks.nope")


def test_assignment_rules():
    block = Block()
    with pytest.raises(TypeError, match="parameter 'weight'"):
        block.norm.weight = mf.ones(4)  # a plain Tensor cannot replace a Parameter
    with pytest.raises(TypeError, match="child module 'norm'"):
        block.norm = mf.ones(4)
    block.mask = mf.zeros(4)  # a Tensor replaces a buffer
    assert "mask" in dict(block.named_buffers())
    block.norm = nn.RMSNorm(4)  # replacing a child keeps its place (state dict order)
    assert [n for n, _ in block.named_children()] == ["norm", "mlp"]
    del block.mlp
    assert [n for n, _ in block.named_children()] == ["norm"]

    class Early(nn.Module):
        def __init__(self):
            self.layer = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Early()


def test_parameter_is_a_tensor_that_requires_grad():
    p = nn.Parameter(mf.zeros(2, 3))
    assert isinstance(p, mf.Tensor) and p.requires_grad and p.shape == (2, 3)
    assert repr(p).startswith("Parameter(")
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad


def test_parameters_use_the_default_backend_and_dtype():
    assert nn.Linear(2, 3).weight.dtype == np.float32
    assert nn.Linear(2, 3, dtype="float64").weight.dtype == np.float64
    mf.set_default_dtype("float64")
    try:
        assert nn.Conv2d(1, 2, 3).weight.dtype == np.float64
    finally:
        mf.set_default_dtype("float32")
    with mf.use_backend("meta"):
        assert nn.Embedding(3, 2).weight.backend.name == "meta"


def test_repr_is_nested_like_pytorch():
    text = repr(Block())
    assert text.startswith("Block(\n  (norm): LayerNorm((4,), eps=1e-05, elementwise_affine=True)")
    assert "  (mlp): Sequential(\n    (0): Linear(in_features=4, out_features=8, bias=True)" in text
    assert "    (1): ReLU()\n" in text
    assert repr(nn.Conv2d(3, 8, 3, padding=1, bias=False)) == (
        "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
    )


def test_containers():
    layers = [nn.Linear(2, 2) for _ in range(3)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and seq[-1] is layers[2] and list(seq) == layers
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == layers[1:]
    x = mf.randn(4, 2)
    np.testing.assert_allclose(seq(x).numpy(), layers[2](layers[1](layers[0](x))).numpy())
    named = nn.Sequential({"fc": layers[0], "act": nn.Tanh()})
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]

    mods = nn.ModuleList(layers)
    del mods[0]
    mods.insert(0, nn.Identity())
    mods[1] = nn.ReLU()
    assert [n for n, _ in mods.named_children()] == ["0", "1", "2"]
    assert isinstance(mods[1], nn.ReLU) and mods[2] is layers[2]
    with pytest.raises(IndexError, match="out of range"):
        mods[3]
    with pytest.raises(TypeError, match="no forward"):
        mods(x)

    heads = nn.ModuleDict({"a": nn.Linear(2, 1)})
    heads["b"] = nn.Linear(2, 3)
    assert list(heads) == ["a", "b"] and "b" in heads and len(heads) == 2
    assert list(heads.state_dict()) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    with pytest.raises(KeyError, match="'c' is not in"):
        heads["c"]


# --- state dict ---------------------------------------------------------------------------------
def test_state_dict_order_naming_and_buffers():
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert list(bn.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    state = TinyModel().state_dict()
    assert "blocks.0.mask" in state and "blocks.0.cache" not in state  # non-persistent
    assert "head.weight" in state and "wte.weight" in state  # tied: both names, like PyTorch


def test_state_dict_round_trip_restores_outputs():
    mf.manual_seed(1)
    source, target = TinyModel(), TinyModel()
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    assert not np.allclose(source(ids).numpy(), target(ids).numpy())
    weights = [id(p) for p in target.parameters()]
    missing, unexpected = target.load_state_dict(source.state_dict())
    assert missing == [] and unexpected == []
    np.testing.assert_array_equal(source(ids).numpy(), target(ids).numpy())
    assert [id(p) for p in target.parameters()] == weights  # identity kept for optimizers
    arrays = {k: v.numpy().astype(np.float64) for k, v in source.state_dict().items()}
    target.load_state_dict(arrays)  # plain arrays, another dtype: cast to the model's
    assert target.wte.weight.dtype == np.float32
    arrays["wte.weight"][0, 0] = 123.0  # the model holds a copy, not the caller's array
    assert target.wte.weight.data[0, 0] != 123.0


def test_strict_load_lists_every_problem_and_applies_nothing():
    model = Block()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    state = {k: np.full(v.shape, 7.0) for k, v in before.items()}
    del state["norm.bias"]
    state["extra.weight"] = np.zeros(2)
    state["mlp.0.weight"] = np.zeros((3, 3))
    with pytest.raises(RuntimeError) as err:
        model.load_state_dict(state)
    message = str(err.value)
    assert "missing keys: ['norm.bias']" in message
    assert "unexpected keys: ['extra.weight']" in message
    assert "shape mismatch for 'mlp.0.weight': checkpoint (3, 3), model (8, 4)" in message
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key])


def test_non_strict_load_returns_missing_and_unexpected():
    model = Block()
    state = {k: v for k, v in Block().state_dict().items() if k != "mask"}
    state["head.bias"] = mf.zeros(3)
    result = model.load_state_dict(state, strict=False)
    assert result == (["mask"], ["head.bias"])
    assert result.missing_keys == ["mask"] and result.unexpected_keys == ["head.bias"]
    np.testing.assert_array_equal(model.norm.weight.numpy(), state["norm.weight"].numpy())
    state["norm.weight"] = mf.zeros(5)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        model.load_state_dict(state, strict=False)  # shapes are checked even when not strict


# --- modes, freezing, counting ------------------------------------------------------------------
def test_freeze_unfreeze_and_trainable_counts():
    model = TinyModel()
    total = model.num_parameters()
    model(np.array([[1, 2]])).sum().backward()
    assert model.freeze() is model
    assert model.num_parameters(trainable_only=True) == 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    model.blocks[1].unfreeze()
    assert model.num_parameters(trainable_only=True) == model.blocks[1].num_parameters()
    model.unfreeze()
    assert model.num_parameters(trainable_only=True) == total == model.num_parameters()


def test_zero_grad_apply_and_train_eval():
    model = TinyModel()
    model(np.array([[1, 2]])).sum().backward()
    assert model.wte.weight.grad is not None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "TinyModel" and seen.count("Linear") == 5


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_num_parameters_match_the_formulas(kv_heads):
    assert nn.Linear(13, 7).num_parameters() == 13 * 7 + 7
    assert nn.Linear(13, 7, bias=False).num_parameters() == 13 * 7
    assert nn.Conv2d(6, 10, (3, 5), groups=2).num_parameters() == 10 * (6 // 2) * 3 * 5 + 10
    assert nn.BatchNorm2d(5).num_parameters() == 10
    c, h = 16, 4
    kv = (kv_heads or h) * (c // h)
    mha = nn.MultiHeadAttention(c, h, kv_heads=kv_heads)
    assert mha.num_parameters() == 2 * (c * c + c) + 2 * (c * kv + kv)


def test_attention_validates_head_counts():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="divisible by kv_heads"):
        nn.MultiHeadAttention(12, 4, kv_heads=3)
    with pytest.raises(ValueError, match=r"must be \(B, T, 8\)"):
        nn.MultiHeadAttention(8, 2)(mf.randn(2, 3, 6))


# --- initialisation -------------------------------------------------------------------------------
def test_linear_and_conv_init_bounds():
    layer = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    w = layer.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    assert np.abs(layer.bias.numpy()).max() <= bound
    conv = nn.Conv2d(8, 32, 3, groups=2)
    bound = 1 / math.sqrt(8 // 2 * 9)
    assert np.abs(conv.weight.numpy()).max() <= bound < 1.05 * np.abs(conv.weight.numpy()).max()


def test_embedding_init_and_padding_row():
    emb = nn.Embedding(1000, 64, padding_idx=-1)
    w = emb.weight.numpy()
    assert emb.padding_idx == 999 and not w[999].any()
    assert abs(w[:999].std() - 1.0) < 0.02 and abs(w[:999].mean()) < 0.02


def test_embedding_padding_row_gets_no_gradient():
    emb = _f64(nn.Embedding(5, 3, padding_idx=0))
    ids = np.array([[0, 2, 0], [2, 4, 1]])
    out = emb(ids)
    np.testing.assert_array_equal(out.numpy(), emb.weight.numpy()[ids])
    (out * out).sum().backward()
    grad = emb.weight.grad.numpy()
    assert not grad[0].any() and not grad[3].any() and grad[2].any()
    np.testing.assert_allclose(grad[2], 4 * emb.weight.numpy()[2])  # two uses, d(w^2) = 2w


def test_init_is_reproducible_bit_for_bit():
    mf.manual_seed(7)
    a = TinyModel()
    mf.manual_seed(7)
    b = TinyModel()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert p.numpy().tobytes() == q.numpy().tobytes(), name


def test_init_functions_statistics():
    t = mf.empty(200, 300)
    assert init.calculate_fan_in_and_fan_out(mf.empty(8, 3, 5, 5)) == (75, 200)
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.kaiming_normal_(t, nonlinearity="relu") is t
    assert t.numpy().std() == pytest.approx(math.sqrt(2 / 300), rel=0.02)
    init.xavier_uniform_(t)
    assert np.abs(t.numpy()).max() <= math.sqrt(6 / 500)
    init.xavier_normal_(t, gain=2.0)
    assert t.numpy().std() == pytest.approx(2 * math.sqrt(2 / 500), rel=0.02)
    init.trunc_normal_(t, std=1.0, a=-0.5, b=1.0)
    assert t.numpy().min() >= -0.5 and t.numpy().max() <= 1.0 and t.numpy().min() < -0.49
    init.normal_(t, 3.0, 0.5)
    assert t.numpy().mean() == pytest.approx(3.0, abs=0.01)
    init.zeros_(t)
    assert not t.numpy().any()
    with pytest.raises(ValueError, match="at least 2 axes"):
        init.xavier_uniform_(mf.empty(5))
    with pytest.raises(ValueError, match="too little"):
        init.trunc_normal_(t, a=10.0, b=11.0)


# --- train / eval ---------------------------------------------------------------------------------
def test_dropout_respects_train_and_eval():
    drop = nn.Dropout(0.25)
    x = mf.ones(100, 100)
    y = drop(x).numpy()
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nn.Dropout(1.5)


def test_batchnorm_running_statistics_and_eval():
    bn = nn.BatchNorm2d(3)
    x = mf.tensor(np.random.default_rng(0).normal(2.0, 3.0, (8, 3, 4, 4)), dtype="float32")
    y = bn(x).numpy()
    assert np.abs(y.mean(axis=(0, 2, 3))).max() < 1e-5  # batch statistics in training
    batch = x.numpy()
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * batch.mean(axis=(0, 2, 3)), rtol=1e-5)
    unbiased = batch.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * unbiased, rtol=1e-5)
    assert int(bn.num_batches_tracked.item()) == 1
    bn.eval()
    mean, var = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    expected = (batch - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(bn(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bn.running_mean.numpy(), mean)  # eval leaves them alone
    assert int(bn.num_batches_tracked.item()) == 1


def test_batchnorm_cumulative_average_and_no_running_stats():
    bn = nn.BatchNorm2d(2, momentum=None)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, 2, 3, 3)) for _ in range(3)]
    for b in batches:
        bn(mf.tensor(b))
    expected = np.mean([b.mean(axis=(0, 2, 3)) for b in batches], axis=0)
    np.testing.assert_allclose(bn.running_mean.numpy(), expected, rtol=1e-5)
    free = nn.BatchNorm2d(2, track_running_stats=False).eval()
    assert list(free.state_dict()) == ["weight", "bias"]
    y = free(mf.tensor(batches[0])).numpy()
    assert np.abs(y.mean(axis=(0, 2, 3))).max() < 1e-5  # batch statistics even in eval
    with pytest.raises(ValueError, match="expects 2 channels"):
        free(mf.randn(2, 3, 4, 4))


# --- gradient checks (float64) ------------------------------------------------------------------
def _check_layer(layer, *inputs, **kwargs):
    params = list(layer.parameters())
    assert mf.gradcheck(lambda *args: layer(*args[: len(inputs)], **kwargs), [*inputs, *params])


def test_gradcheck_linear():
    _check_layer(_f64(nn.Linear(4, 3)), _randn(2, 5, 4))


@pytest.mark.parametrize("padding_idx", [None, 1])
def test_gradcheck_embedding(padding_idx):
    # the padding row is left out: by design it gets no gradient though it moves the output
    layer = _f64(nn.Embedding(6, 3, padding_idx=padding_idx))
    ids = np.array([[0, 3, 5], [5, 0, 2]])
    assert mf.gradcheck(lambda w: layer(ids), [layer.weight])


def test_gradcheck_layer_norm_and_rms_norm():
    for layer in (nn.LayerNorm(5), nn.LayerNorm((2, 5)), nn.RMSNorm(5)):
        layer = _f64(layer)
        for p in layer.parameters():  # move away from 1/0 so that every term shows
            p.data = p.data + np.random.default_rng(3).normal(0, 0.1, p.shape)
        _check_layer(layer, _randn(3, 2, 5))


def test_gradcheck_conv2d():
    _check_layer(_f64(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)), _randn(2, 4, 5, 5))


def test_gradcheck_batchnorm_train():
    layer = _f64(nn.BatchNorm2d(3))
    _check_layer(layer, _randn(4, 3, 2, 2))


@pytest.mark.parametrize("kv_heads,is_causal", [(None, True), (2, True), (1, False)])
def test_gradcheck_multi_head_attention(kv_heads, is_causal):
    layer = _f64(nn.MultiHeadAttention(8, 4, kv_heads=kv_heads))
    _check_layer(layer, _randn(2, 3, 8), is_causal=is_causal)


def test_gradcheck_cross_attention_with_padding_mask():
    layer = _f64(nn.MultiHeadAttention(6, 2))
    mask = np.array([True, True, False, True])[None, None, None, :]  # (1, 1, 1, Tk)
    q, kv = _randn(2, 3, 6), _randn(2, 4, 6, seed=1)
    _check_layer(layer, q, kv, attn_mask=mask)


# --- attention semantics ----------------------------------------------------------------------------
def test_grouped_query_attention_repeats_heads_in_hugging_face_order():
    layer = _f64(nn.MultiHeadAttention(8, 4, kv_heads=2))
    x = _randn(2, 5, 8)
    b, t, h, d = 2, 5, 4, 2
    q = x.numpy() @ layer.q_proj.weight.numpy().T + layer.q_proj.bias.numpy()
    k = x.numpy() @ layer.k_proj.weight.numpy().T + layer.k_proj.bias.numpy()
    v = x.numpy() @ layer.v_proj.weight.numpy().T + layer.v_proj.bias.numpy()
    heads = []
    for i in range(h):  # query head i reads kv head i // 2
        g = i // 2
        s = (
            q[..., i * d : (i + 1) * d]
            @ k[..., g * d : (g + 1) * d].swapaxes(-1, -2)
            / math.sqrt(d)
        )
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        heads.append((p / p.sum(-1, keepdims=True)) @ v[..., g * d : (g + 1) * d])
    expected = np.concatenate(heads, -1) @ layer.o_proj.weight.numpy().T + layer.o_proj.bias.numpy()
    np.testing.assert_allclose(layer(x, is_causal=True).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert b == x.shape[0]


@pytest.mark.parametrize("kv_heads,mask_kind", [(None, "bool"), (2, "bool"), (2, "float")])
def test_attention_dropout_path_matches_fused_path(monkeypatch, kv_heads, mask_kind):
    """The explicit path (used only with dropout in training) computes what the fused op does,
    including a query whose keys are all masked (zeros, finite gradients)."""
    layer = _f64(nn.MultiHeadAttention(8, 4, dropout=0.5, kv_heads=kv_heads))
    x = _randn(2, 4, 8)
    mask = np.array([[True, True, True, False], [False, False, False, False]])[:, None, None, :]
    if mask_kind == "float":  # an additive bias, e.g. ALiBi's
        mask = np.random.default_rng(5).normal(size=(2, 1, 4, 4))
    fused = layer.eval()(x, attn_mask=mask, is_causal=True).numpy()
    monkeypatch.setattr(F, "dropout", lambda t, p, training=True, generator=None: t)
    explicit = layer.train()(x, attn_mask=mask, is_causal=True)
    np.testing.assert_allclose(explicit.numpy(), fused, rtol=1e-12, atol=1e-12)
    explicit.sum().backward()
    assert np.isfinite(layer.q_proj.weight.grad.numpy()).all()


def test_attention_dropout_is_active_only_in_training():
    layer = nn.MultiHeadAttention(8, 2, dropout=0.5)
    x = mf.randn(2, 6, 8)
    assert not np.allclose(layer(x).numpy(), layer(x).numpy())
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), layer(x).numpy())


def test_attention_matches_pytorch_fixture():
    """Pins the head split/merge order, GQA head sharing, causal + padding masks, and dL/dx."""
    data = json.loads((FIXTURES / "torch_nn.json").read_text())
    assert data["provenance"]["library"].startswith("torch")
    for case in data["cases"]:
        c = case["C"]
        norm = nn.LayerNorm(c, dtype="float64")
        attn = nn.MultiHeadAttention(c, case["H"], kv_heads=case["kv_heads"], dtype="float64")
        norm.load_state_dict(
            {"weight": np.array(case["ln_weight"]), "bias": np.array(case["ln_bias"])}
        )
        attn.load_state_dict(
            {
                f"{p}_proj.{w}": np.array(case[f"{p}_{w}"])
                for p in "qkvo"
                for w in ("weight", "bias")
            }
        )
        x = mf.tensor(np.array(case["x"]), requires_grad=True)
        mask = np.array(case["padding_mask"]) if case["causal"] else None
        y = attn(norm(x), attn_mask=mask, is_causal=case["causal"])
        np.testing.assert_allclose(
            y.numpy(), case["y"], rtol=1e-10, atol=1e-12, err_msg=case["name"]
        )
        y.backward(np.array(case["cotangent"]))
        np.testing.assert_allclose(x.grad.numpy(), case["x_grad"], rtol=1e-10, atol=1e-12)


# --- moving between backends and dtypes ------------------------------------------------------------
def test_meta_builds_a_large_linear_in_no_memory():
    big = nn.Linear(50_000, 50_000, backend="meta")  # 10 GB of float32 if it were real
    assert big.num_parameters() == 50_000 * 50_000 + 50_000
    assert big.weight.backend.name == "meta" and big.weight.shape == (50_000, 50_000)
    small = TinyModel()
    params = list(small.parameters())
    assert small.to("meta") is small
    assert list(small.parameters()) == params  # same Parameter objects
    assert all(p.backend.name == "meta" for p in params)
    assert all(b.backend.name == "meta" for b in small.buffers())


def test_to_backend_round_trip(backend):
    with mf.use_backend("numpy"):
        model = TinyModel()
    model(np.array([[1, 2]])).sum().backward()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    weight, grad = model.wte.weight, model.wte.weight.grad.numpy().copy()
    model.to(backend.name)
    assert model.wte.weight is weight and weight.backend is backend
    assert weight.grad.backend is backend
    model.to("numpy")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key])
    np.testing.assert_array_equal(weight.grad.numpy(), grad)


def test_to_dtype_casts_floats_and_keeps_identity():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm2d(2))
    model[0](mf.randn(4, 3)).sum().backward()
    weight = model[0].weight
    model.to(dtype="float64")
    assert model[0].weight is weight and weight.dtype == np.float64
    assert weight.grad.dtype == np.float64
    assert model[1].running_var.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64  # integer buffers are not cast
    model.to("float32")
    assert weight.dtype == np.float32


def test_deepcopy_gives_an_independent_module():
    model = Block()
    twin = copy.deepcopy(model)
    twin.norm.weight.data[...] = 5.0
    assert model.norm.weight.numpy()[0] == 1.0
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]


# --- pooling, activations, a small CNN --------------------------------------------------------------
def test_pooling_layers():
    x = mf.tensor(np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4))
    blocks = x.numpy().reshape(2, 3, 2, 2, 2, 2)  # (N, C, H/2, kh, W/2, kw)
    np.testing.assert_array_equal(nn.MaxPool2d(2)(x).numpy(), blocks.max(axis=(3, 5)))
    np.testing.assert_allclose(nn.AvgPool2d(2)(x).numpy(), blocks.mean(axis=(3, 5)))
    pooled = nn.AdaptiveAvgPool2d(1)(x).numpy()
    np.testing.assert_allclose(pooled, x.numpy().mean(axis=(2, 3), keepdims=True))
    assert repr(nn.MaxPool2d(3, 1, 1)) == "MaxPool2d(kernel_size=3, stride=1, padding=1)"
    with pytest.raises(ValueError, match="output_size 1"):
        nn.AdaptiveAvgPool2d(2)
    with pytest.raises(ValueError, match="4-D input"):
        nn.MaxPool2d(2)(mf.randn(3, 4, 4))


def test_activation_modules_match_functional():
    x = mf.randn(3, 5)
    for module, fn in [
        (nn.ReLU(), F.relu),
        (nn.SiLU(), F.silu),
        (nn.Tanh(), F.tanh),
        (nn.GELU(), F.gelu),
        (nn.GELU("tanh"), lambda t: F.gelu(t, "tanh")),
        (nn.Identity(), lambda t: t),
    ]:
        np.testing.assert_array_equal(module(x).numpy(), fn(x).numpy())
    assert nn.Flatten()(mf.randn(2, 3, 4)).shape == (2, 12)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


def test_small_cnn_gradcheck():
    model = _f64(
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(3, 2),
        )
    )
    _check_layer(model, _randn(3, 2, 4, 4))
