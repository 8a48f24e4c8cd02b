"""minift.models.rnn: GRU and LSTM against PyTorch 2.13 (stored fixture), float64 gradient
checks of the layers and heads, padding and state carry-over, encoder transfer from the
language model to the classifier, training steps, and meta-backend counts."""

import numpy as np
import pytest
from models_fixture import FIXTURE, draw, f64, randn

import minift as mf
from minift import functional as F
from minift import optim
from minift.models.rnn import GRU, LSTM, RNNClassifier, RNNLanguageModel


# --- PyTorch 2.13 reference (tests/fixtures/make_torch_models.py) --------------------------------
@pytest.mark.parametrize("name,cls", [("gru", GRU), ("lstm", LSTM)])
def test_matches_pytorch_outputs_final_states_and_gradients(name, cls):
    case = FIXTURE[name]
    rng = np.random.default_rng(FIXTURE["provenance"]["seeds"][name])
    layer = f64(cls(3, 4, num_layers=2))
    assert [[k, list(v.shape)] for k, v in layer.state_dict().items()] == case["keys"]
    layer.load_state_dict({k: draw(rng, k, tuple(s)) for k, s in case["keys"]})
    x = mf.tensor(rng.standard_normal((2, 5, 3)), requires_grad=True)
    states = [mf.tensor(rng.standard_normal((2, 2, 4))) for _ in range(cls.num_states)]
    out, final = layer(x, tuple(states) if name == "lstm" else states[0])
    finals = list(final) if name == "lstm" else [final]

    close = {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(out.numpy(), case["output"], **close)
    for got, expected in zip(finals, case["final_states"], strict=True):
        np.testing.assert_allclose(got.numpy(), expected, **close)
    loss = sum((t * mf.tensor(rng.standard_normal(t.shape))).sum() for t in [out, *finals])
    loss.backward()
    np.testing.assert_allclose(layer.weight_hh_l0.grad.numpy(), case["grad_weight_hh_l0"], **close)
    np.testing.assert_allclose(x.grad.numpy(), case["grad_input"], **close)


# --- gradient checks (float64) ------------------------------------------------------------------
def test_gradcheck_gru_two_layers_with_initial_state():
    layer = f64(GRU(2, 3, num_layers=2))
    params = list(layer.parameters())
    x, h0 = randn(2, 3, 2), randn(2, 2, 3, seed=1)
    assert mf.gradcheck(lambda x, h, *p: layer(x, h)[0], [x, h0, *params])
    assert mf.gradcheck(lambda x, h, *p: layer(x, h)[1], [x, h0, *params])


def test_gradcheck_lstm_two_layers_through_both_states():
    layer = f64(LSTM(2, 3, num_layers=2))
    params = list(layer.parameters())
    x, h0, c0 = randn(2, 3, 2), randn(2, 2, 3, seed=1), randn(2, 2, 3, seed=2)

    def everything(x, h, c, *params):  # outputs, h_n and c_n in one tensor: every path is checked
        out, (hn, cn) = layer(x, (h, c))
        return F.cat([F.reshape(out, (2, -1)), F.reshape(hn, (2, -1)), F.reshape(cn, (2, -1))], 1)

    assert mf.gradcheck(everything, [x, h0, c0, *params])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gradcheck_language_model(cell):
    model = f64(RNNLanguageModel(6, 3, 4, cell=cell))
    ids = np.array([[0, 3, 5], [5, 1, 2]])
    assert mf.gradcheck(lambda *p: model(ids), list(model.parameters()), max_entries=64)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gradcheck_classifier_with_lengths(cell):
    model = f64(RNNClassifier(6, 3, 4, num_classes=2, cell=cell, padding_idx=0))
    ids = np.array([[4, 3, 5, 0], [5, 1, 0, 0]])
    # the pads come after each last real token, so even their embedding row has no effect
    params = list(model.parameters())
    assert mf.gradcheck(lambda *p: model(ids, lengths=[3, 2]), params, max_entries=64)


# --- semantics ----------------------------------------------------------------------------------
def test_gru_single_step_by_hand():
    layer = f64(GRU(2, 2))
    x = np.random.default_rng(5).standard_normal((1, 1, 2))
    h = np.random.default_rng(6).standard_normal((1, 1, 2))
    w = {k: v.numpy() for k, v in layer.state_dict().items()}

    def sig(a):
        return 1 / (1 + np.exp(-a))

    gi = x[0] @ w["weight_ih_l0"].T + w["bias_ih_l0"]
    gh = h[0] @ w["weight_hh_l0"].T + w["bias_hh_l0"]
    r, z = sig(gi[:, :2] + gh[:, :2]), sig(gi[:, 2:4] + gh[:, 2:4])
    n = np.tanh(gi[:, 4:] + r * gh[:, 4:])  # r multiplies W_hn h + b_hn, not h
    expected = (1 - z) * n + z * h[0]
    out, hn = layer(mf.tensor(x), mf.tensor(h))
    np.testing.assert_allclose(out.numpy()[0], expected, rtol=1e-12)
    np.testing.assert_allclose(hn.numpy()[0], expected, rtol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_state_carries_over_between_calls(cell):
    model = f64(RNNLanguageModel(7, 3, 5, cell=cell, num_layers=2))
    ids = np.random.default_rng(0).integers(0, 7, (2, 6))
    whole = model(ids).numpy()
    first, state = model(ids[:, :4], return_state=True)
    second = model(ids[:, 4:], state=state)
    np.testing.assert_allclose(np.concatenate([first.numpy(), second.numpy()], 1), whole, 1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_classifier_reads_the_last_real_token(cell):
    model = f64(RNNClassifier(8, 3, 4, num_classes=3, cell=cell, padding_idx=0))
    padded = np.array([[5, 2, 7, 0, 0], [1, 2, 3, 4, 6]])
    by_lengths = model(padded, lengths=np.array([3, 5])).numpy()
    by_mask = model(padded, attention_mask=(padded != 0).astype(np.int64)).numpy()
    alone = model(padded[:1, :3]).numpy()
    np.testing.assert_allclose(by_lengths[0], alone[0], rtol=1e-12)
    np.testing.assert_allclose(by_mask, by_lengths, rtol=1e-12)
    assert not np.allclose(model(padded).numpy()[0], alone[0])  # the pads do change later steps


def test_classifier_rejects_bad_lengths_and_masks():
    model = RNNClassifier(8, 3, 4, num_classes=2)
    ids = np.ones((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="right-padded"):
        model(ids, attention_mask=np.array([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"lie in \[1, 4\]"):
        model(ids, lengths=[0, 4])
    with pytest.raises(ValueError, match=r"must be \(2,\) integers"):
        model(ids, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="not both"):
        model(ids, lengths=[4, 4], attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, T\)"):
        model(ids, attention_mask=np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"ids must be a \(B, T\)"):
        model(np.ones(4, dtype=np.int64))


def test_layers_reject_bad_shapes_and_cells():
    with pytest.raises(ValueError, match=r"input must be \(B, T, 3\)"):
        GRU(3, 4)(mf.randn(2, 5, 2))
    with pytest.raises(ValueError, match=r"initial state must be \(num_layers, B, hidden\)"):
        GRU(3, 4, num_layers=2)(mf.randn(2, 5, 3), mf.randn(1, 2, 4))
    with pytest.raises(ValueError, match=r"a pair \(h0, c0\)"):
        LSTM(3, 4)(mf.randn(2, 5, 3), mf.randn(1, 2, 4))  # the LSTM needs (h0, c0)
    with pytest.raises(ValueError, match="cell must be one of"):
        RNNLanguageModel(5, 2, 3, cell="rnn")


def test_encoder_transfers_from_language_model_to_classifier():
    lm = RNNLanguageModel(9, 4, 6, cell="lstm", num_layers=2)
    clf = RNNClassifier(9, 4, 6, num_classes=2, cell="lstm", num_layers=2)
    missing, unexpected = clf.load_state_dict(lm.state_dict(), strict=False)
    assert missing == ["classifier.weight", "classifier.bias"]
    assert unexpected == ["lm_head.weight", "lm_head.bias"]
    np.testing.assert_array_equal(clf.rnn.weight_hh_l1.numpy(), lm.rnn.weight_hh_l1.numpy())
    np.testing.assert_array_equal(clf.embed.weight.numpy(), lm.embed.weight.numpy())


# --- training and counting ----------------------------------------------------------------------
def test_classifier_learns_a_task_that_needs_memory():
    # the label is the first token's parity: the answer must travel through every step
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 6, (32, 6))
    labels = ids[:, 0] % 2
    model = RNNClassifier(6, 8, 16, num_classes=2, cell="gru")
    opt = optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(ids), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_language_model_learns_a_cycle():
    ids = (np.arange(12)[None, :] + np.arange(4)[:, None]) % 5  # 0 1 2 3 4 0 1 ...
    model = RNNLanguageModel(5, 8, 16, cell="lstm")
    opt = optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(20):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits, ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def per_layer(gates, inputs, hidden):
    """Parameters of one recurrent layer: G stacked (W_ih, W_hh, b_ih, b_hh)."""
    return gates * (hidden * inputs + hidden * hidden + 2 * hidden)


def test_pytorch_init_and_parameter_counts_on_meta():
    layer = GRU(5, 8, num_layers=2)
    bound = 1 / np.sqrt(8)
    assert all(np.abs(p.numpy()).max() <= bound for p in layer.parameters())
    with mf.use_backend("meta"):
        gru, lstm = GRU(5, 8, num_layers=2), LSTM(5, 8, num_layers=2)
        lm = RNNLanguageModel(1000, 32, 64, cell="lstm", num_layers=2)
    assert gru.num_parameters() == per_layer(3, 5, 8) + per_layer(3, 8, 8)
    assert lstm.num_parameters() == per_layer(4, 5, 8) + per_layer(4, 8, 8)
    expected = 1000 * 32 + per_layer(4, 32, 64) + per_layer(4, 64, 64) + 64 * 1000 + 1000
    assert lm.num_parameters() == expected
    assert lm.rnn.weight_ih_l0.backend.name == "meta"
