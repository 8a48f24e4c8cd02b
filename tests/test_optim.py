"""Optimizers, schedules and clipping against PyTorch (stored fixture), plus checkpoints,
frozen parameters and error messages."""

import json
import math
import pathlib

import numpy as np
import pytest

import minift as mf
from minift import optim

FIXTURE = json.loads((pathlib.Path(__file__).parent / "fixtures" / "torch_optim.json").read_text())
RUNS = FIXTURE["runs"]


def _readonly(array):
    array = np.array(array, dtype=np.float64)
    array.flags.writeable = False  # an optimizer that writes into a gradient fails loudly
    return array


def _params(backend=None):
    init = FIXTURE["init"]
    w = mf.tensor(np.array(init["w"]), requires_grad=True, backend=backend)
    b = mf.tensor(np.array(init["b"]), requires_grad=True, backend=backend)
    return w, b


def _make(run, w, b):
    groups = [{"params": [w]}, {"params": [b], "lr": FIXTURE["lrs"][1], **run["group1"]}]
    return getattr(optim, run["optimizer"])(groups, lr=FIXTURE["lrs"][0], **run["defaults"])


def _set_grads(w, b, grads):
    for p, g in ((w, grads["w"]), (b, grads["b"])):
        p.grad = mf.tensor(_readonly(g), backend=p.backend)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_trajectory_matches_pytorch(name, backend):
    run = RUNS[name]
    w, b = _params(backend)
    opt = _make(run, w, b)
    for step, (grads, expected) in enumerate(zip(FIXTURE["grads"], run["params"])):
        _set_grads(w, b, grads)
        opt.step()
        for p, key in ((w, "w"), (b, "b")):
            np.testing.assert_allclose(p.numpy(), expected[key], rtol=0, atol=1e-12,
                                       err_msg=f"{name}, step {step + 1}, {key}")


@pytest.mark.parametrize("name", sorted(FIXTURE["schedules"]["lrs"]))
def test_schedule_matches_transformers(name):
    spec = FIXTURE["schedules"]
    w = mf.tensor(np.zeros(2), requires_grad=True)
    opt = optim.SGD([w], lr=spec["base_lr"])
    sched = optim.get_scheduler(name, opt, num_warmup_steps=spec["num_warmup_steps"],
                                num_training_steps=spec["num_training_steps"])
    lrs = [sched.get_last_lr()[0]]
    for _ in range(spec["steps"]):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    np.testing.assert_allclose(lrs, spec["lrs"][name], rtol=1e-14, atol=1e-17)
    assert opt.param_groups[0]["lr"] == lrs[-1]


def test_schedule_scales_each_group_from_its_own_base_lr():
    w, b = _params()
    opt = optim.AdamW([{"params": [w], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    sched = optim.get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=6)
    assert sched.get_last_lr() == [0.0, 0.0]
    for _ in range(2):
        sched.step()
    assert sched.get_last_lr() == pytest.approx([1e-3, 1e-2])
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.75e-3, 0.75e-2])


def test_scheduler_state_dict_resumes():
    w, _ = _params()
    opt = optim.SGD([w], lr=0.1)
    sched = optim.get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=8)
    for _ in range(4):
        sched.step()
    saved_opt, saved = opt.state_dict(), sched.state_dict()
    expected = []
    for _ in range(3):
        sched.step()
        expected.append(sched.get_last_lr())

    opt2 = optim.SGD([w], lr=0.5)
    opt2.load_state_dict(saved_opt)
    sched2 = optim.get_scheduler("cosine", opt2, num_warmup_steps=2, num_training_steps=8)
    sched2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == saved["last_lr"][0]
    resumed = []
    for _ in range(3):
        sched2.step()
        resumed.append(sched2.get_last_lr())
    assert resumed == expected


@pytest.mark.parametrize("case", FIXTURE["clip"]["cases"],
                         ids=lambda c: f"{c['norm_type']}-{c['max_norm']}")
def test_clip_grad_norm_matches_pytorch(case, backend):
    grads = [np.array(g) for g in FIXTURE["clip"]["grads"]]
    params = [mf.tensor(np.zeros(g.shape), requires_grad=True, backend=backend) for g in grads]
    originals = [g.copy() for g in grads]
    for p, g in zip(params, grads):
        p.grad = mf.tensor(g, backend=backend)
    total = optim.clip_grad_norm_(params, case["max_norm"], norm_type=case["norm_type"])
    assert isinstance(total, float)
    assert total == pytest.approx(case["total_norm"], rel=1e-13)
    for p, expected in zip(params, case["clipped"]):
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-13, atol=1e-15)
    if backend.name == "numpy":  # replaced by scaled copies, the old arrays are untouched
        for g, original in zip(grads, originals):
            np.testing.assert_array_equal(g, original)


def test_clip_grad_norm_effect_and_edge_cases():
    p = mf.tensor(np.zeros(4), requires_grad=True)
    q = mf.tensor(np.zeros(3), requires_grad=True)
    p.grad = mf.tensor(np.array([3.0, 4.0, 0.0, 0.0]))
    assert optim.clip_grad_norm_([p, q], 1.0) == pytest.approx(5.0)  # q has no grad: skipped
    assert np.linalg.norm(p.grad.numpy()) == pytest.approx(1.0, rel=1e-5)
    assert optim.clip_grad_norm_([q], 1.0) == 0.0
    with pytest.raises(RuntimeError, match="total norm"):
        p.grad = mf.tensor(np.array([np.inf, 0.0, 0.0, 0.0]))
        optim.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm_(p, -1.0)


def test_clip_grad_value_():
    p = mf.tensor(np.zeros(4), requires_grad=True)
    g = _readonly([-3.0, -0.5, 0.2, 7.0])
    p.grad = mf.tensor(g)
    optim.clip_grad_value_([p], 1.0)
    np.testing.assert_array_equal(p.grad.numpy(), [-1.0, -0.5, 0.2, 1.0])
    with pytest.raises(ValueError, match="clip_value"):
        optim.clip_grad_value_(p, -1.0)


# --- checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RUNS))
def test_state_dict_round_trip_resumes_identically(name):
    run, grads = RUNS[name], FIXTURE["grads"]
    w, b = _params()
    straight = _make(run, w, b)
    for g in grads:
        _set_grads(w, b, g)
        straight.step()

    w2, b2 = _params()
    first = _make(run, w2, b2)
    for g in grads[:3]:
        _set_grads(w2, b2, g)
        first.step()
    saved = first.state_dict()
    snapshot = {i: {k: np.copy(v) for k, v in s.items()} for i, s in saved["state"].items()}
    w3 = mf.tensor(w2.numpy().copy(), requires_grad=True)
    b3 = mf.tensor(b2.numpy().copy(), requires_grad=True)
    resumed = _make(run, w3, b3)
    resumed.load_state_dict(saved)
    first.step()  # the loaded optimizer holds copies: its source may keep training
    for g in grads[3:]:
        _set_grads(w3, b3, g)
        resumed.step()
    np.testing.assert_array_equal(w3.numpy(), w.numpy())
    np.testing.assert_array_equal(b3.numpy(), b.numpy())
    assert sorted(saved["state"]) == sorted(snapshot)


def test_state_dict_has_pytorch_shape():
    w, b = _params()
    opt = optim.Adam([{"params": [w], "lr": 0.1}, {"params": [b]}], weight_decay=0.5)
    _set_grads(w, b, FIXTURE["grads"][0])
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.1, 1e-3]
    assert sd["param_groups"][1]["weight_decay"] == 0.5
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][1]["step"] == 1 and sd["state"][1]["exp_avg"].shape == (3,)


def test_load_state_dict_restores_hyper_parameters_and_numbers():
    w, b = _params()
    opt = optim.SGD([{"params": [w]}, {"params": [b]}], lr=0.1, momentum=0.9)
    _set_grads(w, b, FIXTURE["grads"][0])
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][1]["lr"] = 0.01
    sd["state"] = {str(k): v for k, v in sd["state"].items()}  # keys as they come from JSON
    other = optim.SGD([{"params": [w]}, {"params": [b]}], lr=0.5, momentum=0.9)
    other.load_state_dict(sd)
    assert [g["lr"] for g in other.param_groups] == [0.1, 0.01]
    assert other.state[b]["momentum_buffer"] is not sd["state"]["1"]["momentum_buffer"]


def test_load_state_dict_accepts_a_step_saved_as_a_0d_array():
    w, b = _params()
    opt = optim.Adam([w, b])
    _set_grads(w, b, FIXTURE["grads"][0])
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["step"] = np.array(1)  # as a safetensors file would give it back
    other = optim.Adam([w, b])
    other.load_state_dict(sd)
    assert other.state[w]["step"] == 1 and isinstance(other.state[w]["step"], int)


def test_load_state_dict_rejects_mismatches():
    w, b = _params()
    opt = optim.Adam([{"params": [w]}, {"params": [b]}])
    _set_grads(w, b, FIXTURE["grads"][0])
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer has 1"):
        optim.Adam([w, b]).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 1 parameters in the state_dict but 2"):
        optim.Adam([{"params": [w, b]}, {"params": [mf.tensor([1.0], requires_grad=True)]}]
                   ).load_state_dict(sd)
    swapped = optim.Adam([{"params": [b]}, {"params": [w]}])
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0 has shape \(2, 3\).*\(3,\)"):
        swapped.load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})


# --- which parameters move ---------------------------------------------------------------------
def test_frozen_and_gradless_parameters_get_no_state_and_do_not_move():
    w, b = _params()
    frozen = mf.tensor(np.ones(3))
    no_grad_yet = mf.tensor(np.ones(2), requires_grad=True)
    opt = optim.AdamW([w, b, frozen, no_grad_yet], lr=0.1)
    b.requires_grad = False
    _set_grads(w, b, FIXTURE["grads"][0])  # b has a gradient but is frozen now
    frozen.grad = mf.tensor(np.ones(3))
    before = [p.numpy().copy() for p in (b, frozen, no_grad_yet)]
    opt.step()
    assert list(opt.state) == [w]
    assert list(opt.state_dict()["state"]) == [0]
    for p, old in zip((b, frozen, no_grad_yet), before):
        np.testing.assert_array_equal(p.numpy(), old)
    assert not np.array_equal(w.numpy(), FIXTURE["init"]["w"])


def test_sgd_without_momentum_keeps_no_state():
    w, b = _params()
    opt = optim.SGD([w, b], lr=0.1)
    _set_grads(w, b, FIXTURE["grads"][0])
    opt.step()
    assert opt.state == {}
    np.testing.assert_allclose(w.numpy(), np.array(FIXTURE["init"]["w"])
                               - 0.1 * np.array(FIXTURE["grads"][0]["w"]), rtol=1e-15)


def test_zero_grad():
    w, b = _params()
    opt = optim.SGD([w, b], lr=0.1)
    _set_grads(w, b, FIXTURE["grads"][0])
    old = w.grad.data
    opt.zero_grad(set_to_none=False)
    assert w.grad.data is not old and not w.grad.data.any() and w.grad.shape == (2, 3)
    opt.zero_grad()
    assert w.grad is None and b.grad is None


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
                                  lambda ps: optim.Adam(ps, weight_decay=0.1, amsgrad=True),
                                  lambda ps: optim.AdamW(ps)], ids=["sgd", "adam", "adamw"])
def test_float32_stays_float32(make):
    w = mf.randn(4, 3, requires_grad=True)
    opt = make([w])
    for _ in range(2):
        w.grad = mf.randn(4, 3)
        opt.step()
    assert w.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state[w].values() if hasattr(v, "dtype"))


def test_step_runs_without_graph_and_calls_closure():
    w = mf.tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt = optim.SGD([w], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    np.testing.assert_array_equal(w.numpy(), [0.5, -1.0])  # w - 0.25 * 2w
    assert w.is_leaf


def test_adamw_decays_where_adam_l2_barely_does():
    """A weight with a large constant gradient: Adam's L2 term is divided away by sqrt(v)."""
    def run(cls):
        w = mf.tensor(np.array([1.0, 1.0]), requires_grad=True)
        opt = cls([w], lr=0.01, weight_decay=0.1)
        for _ in range(100):
            w.grad = mf.tensor(np.array([100.0, -100.0]))  # pushes the two entries apart
            opt.step()
        return w.numpy()

    adam, adamw = run(optim.Adam), run(optim.AdamW)
    # With decoupled decay both entries are additionally pulled toward 0 by lr*wd*w per step.
    assert adamw[0] < adam[0] and abs(adamw[1]) < abs(adam[1])


def test_adam_fits_a_toy_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.3
    w = mf.tensor(np.zeros(3), requires_grad=True)
    c = mf.tensor(np.zeros(1), requires_grad=True)
    opt = optim.AdamW([w, c], lr=0.05, weight_decay=0.0)
    sched = optim.get_scheduler("cosine", opt, num_warmup_steps=10, num_training_steps=300)
    for _ in range(300):
        opt.zero_grad()
        err = mf.tensor(x) @ w + c - mf.tensor(y)
        loss = (err * err).mean()
        loss.backward()
        optim.clip_grad_norm_([w, c], 10.0)
        opt.step()
        sched.step()
    assert loss.item() < 1e-6
    np.testing.assert_allclose(w.numpy(), [1.5, -2.0, 0.5], atol=1e-3)


def test_add_param_group_and_to_numpy():
    w, b = _params()
    opt = optim.Adam([w], lr=0.1, betas=(0.5, 0.9))
    opt.add_param_group({"params": b, "lr": 0.2})
    assert opt.param_groups[1]["betas"] == (0.5, 0.9) and opt.param_groups[1]["lr"] == 0.2
    _set_grads(w, b, FIXTURE["grads"][0])
    opt.step()
    assert opt.to("numpy") is opt and set(opt.state) == {w, b}
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [w]})


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, error, match", [
    (lambda w: optim.SGD([], lr=0.1), ValueError, "empty parameter list"),
    (lambda w: optim.SGD(w, lr=0.1), TypeError, "single Tensor; wrap it in a list"),
    (lambda w: optim.SGD([w, w], lr=0.1), ValueError, "appears twice"),
    (lambda w: optim.SGD([{"params": [w]}, {"params": [w]}], lr=0.1), ValueError,
     "more than one parameter group"),
    (lambda w: optim.SGD([w, np.zeros(3)], lr=0.1), TypeError, "item 1 is ndarray"),
    (lambda w: optim.SGD([w * 2], lr=0.1), ValueError, "not a leaf"),
    (lambda w: optim.SGD([w], lr=-0.1), ValueError, "invalid learning rate -0.1"),
    (lambda w: optim.SGD([{"params": [w], "lr": -1.0}], lr=0.1), ValueError, "learning rate"),
    (lambda w: optim.SGD([w], lr=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda w: optim.SGD([w], lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
    (lambda w: optim.Adam([w], betas=(0.9, 1.0)), ValueError, "invalid betas"),
    (lambda w: optim.AdamW([w], eps=-1e-8), ValueError, "invalid eps"),
    (lambda w: optim.SGD([{"lr": 0.1}], lr=0.1), ValueError, "'params' entry"),
])
def test_bad_arguments_fail_early(make, error, match):
    w = mf.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(error, match=match):
        make(w)


def test_unknown_scheduler_lists_valid_names():
    opt = optim.SGD([mf.tensor(np.ones(2), requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"'cosine', 'linear'"):
        optim.get_scheduler("cosin", opt, 10, 100)
    with pytest.raises(ValueError, match="num_warmup_steps"):
        optim.get_scheduler("linear", opt, num_training_steps=100)
    with pytest.raises(ValueError, match="num_training_steps"):
        optim.get_scheduler("cosine", opt, num_warmup_steps=10)
    assert optim.get_scheduler("constant", opt).get_last_lr() == [0.1]
    assert math.isclose(optim.get_scheduler("constant_with_warmup", opt, 4).get_last_lr()[0], 0.0)


def test_optimizer_state_follows_a_dtype_change():
    import minift as mf
    from minift import optim as mf_optim

    p = mf.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    opt = mf_optim.Adam([p], lr=0.1)
    p.grad = mf.tensor(np.ones(3, dtype=np.float32))
    opt.step()
    p.data = p.data.astype(np.float64)
    opt.to(dtype="float64")
    assert all(v.dtype == np.float64 for v in opt.state[p].values() if hasattr(v, "dtype") and v.ndim)
    p.grad = mf.tensor(np.ones(3))
    opt.step()
    assert p.data.dtype == np.float64
