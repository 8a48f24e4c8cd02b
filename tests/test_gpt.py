"""GPT (GPT-2 and Llama shapes): gradients, masks, positions, the KV cache, sampling, configs."""

import time
import tracemalloc

import numpy as np
import pytest

import minift as mf
from minift.models import configs
from minift.models.generation import KVCache, next_tokens
from minift.models.gpt import GPT, GPTConfig

SHAPES = ["gpt-tiny", "llama-tiny"]


def _model(name, dtype=None, **changes):
    config = configs.get(name)
    if changes:
        config = GPTConfig(**{**config.to_dict(), **changes})
    mf.manual_seed(0)
    model = GPT(config)
    return model.to(dtype=dtype) if dtype else model


def _ids(shape, vocab=64, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


@pytest.mark.parametrize("name", SHAPES)
def test_gradcheck_whole_model_float64(name):
    model = _model(name, np.float64, n_layers=1, vocab_size=16, dim=16, ffn_dim=24)
    ids = _ids((2, 5), vocab=16)
    params = list(model.parameters())
    assert mf.gradcheck(lambda *ps: model(ids), params, max_entries=48)


def test_gradcheck_with_padding_mask_and_cache():
    model = _model("llama-tiny", np.float64, n_layers=1, vocab_size=16, dim=16, ffn_dim=24)
    ids, mask = _ids((2, 4), vocab=16), np.array([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])

    def forward(*params):
        cache = KVCache()
        model(_ids((2, 2), vocab=16, seed=1), mask[:, :2], cache)
        return model(ids, mask, cache)

    assert mf.gradcheck(forward, list(model.parameters()), max_entries=48)


@pytest.mark.parametrize("name", SHAPES)
def test_causal_future_tokens_do_not_change_the_past(name):
    model = _model(name)
    ids = _ids((1, 8))
    changed = ids.copy()
    changed[0, 5:] = (changed[0, 5:] + 7) % 64
    a, b = model(ids).numpy(), model(changed).numpy()
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-3


@pytest.mark.parametrize("name", SHAPES)
def test_left_padding_gives_the_unpadded_logits(name):
    model = _model(name)
    ids = _ids((1, 6))
    padded = np.concatenate([np.zeros((1, 3), np.int64), ids], axis=1)
    mask = np.concatenate([np.zeros((1, 3)), np.ones((1, 6))], axis=1)
    np.testing.assert_allclose(model(padded, mask).numpy()[:, 3:], model(ids).numpy(), atol=2e-5)


@pytest.mark.parametrize("grad", [True, False], ids=["autograd-concatenates", "no-grad-buffer"])
@pytest.mark.parametrize("name", SHAPES)
def test_cache_prefill_then_steps_equals_full_forward(name, grad):
    model = _model(name).eval()
    ids = _ids((2, 7))
    full = model(ids).numpy()
    cache = KVCache()
    with mf.enable_grad() if grad else mf.no_grad():
        parts = [model(ids[:, :4], cache=cache).numpy()]
        parts += [model(ids[:, t : t + 1], cache=cache).numpy() for t in range(4, 7)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=2e-5)
    assert cache.length == 7 and cache.keys[0].shape == (2, model.config.kv_heads, 7, 8)
    assert cache.keys[0].requires_grad == grad  # the graph is kept only when autograd records


def test_cache_without_autograd_grows_one_buffer_by_doubling():
    model = _model(SHAPES[0]).eval()
    ids, cache, buffers = _ids((1, 20)), KVCache(), set()
    with mf.no_grad():
        model(ids[:, :2], cache=cache)
        for t in range(2, 20):
            model(ids[:, t : t + 1], cache=cache)
            buffers.add(id(cache._buffers[0][0]))
            assert np.shares_memory(cache.keys[0].data, cache._buffers[0][0])
    assert len(buffers) == 3  # capacities 6, 14, 30 for 3..20 tokens: two regrowths, not 18


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize(
    "sampling", [{}, {"do_sample": True, "top_k": 20, "top_p": 0.9, "temperature": 0.8, "seed": 3}]
)
def test_cached_generation_equals_uncached_token_for_token(name, sampling):
    model = _model(name, np.float64)
    ids, mask = _ids((2, 5)), np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    cached = model.generate(ids, 12, attention_mask=mask, **sampling)
    uncached = model.generate(ids, 12, attention_mask=mask, use_cache=False, **sampling)
    assert cached.shape == (2, 17)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :5], ids)


def test_generate_stops_at_eos_and_keeps_mode():
    model = _model("gpt-tiny").train()
    first = model.generate(_ids((1, 3)), 1)[0, -1]
    out = model.generate(_ids((1, 3)), 10, eos_id=int(first))
    assert out.shape == (1, 4) and model.training


def test_greedy_equals_top_k_one_and_tiny_top_p():
    logits = np.random.default_rng(0).standard_normal((4, 50))
    rng = np.random.default_rng(0)
    greedy = next_tokens(logits, False, 1.0, None, None, rng)
    np.testing.assert_array_equal(next_tokens(logits, True, 1.0, 1, None, rng), greedy)
    np.testing.assert_array_equal(next_tokens(logits, True, 1.0, None, 1e-9, rng), greedy)


def test_sampling_follows_the_filtered_distribution():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    draws = np.array([next_tokens(logits, True, 1.0, None, 0.7, rng)[0] for _ in range(4000)])
    # top-p 0.7 keeps {0, 1} (0.5 + 0.3 >= 0.7), renormalised to 0.625 / 0.375
    assert set(draws) == {0, 1}
    assert abs((draws == 0).mean() - 0.625) < 0.03
    draws = np.array([next_tokens(logits, True, 1.0, 3, None, rng)[0] for _ in range(4000)])
    assert set(draws) == {0, 1, 2} and abs((draws == 2).mean() - 0.15 / 0.95) < 0.03


def test_tied_embeddings_share_one_parameter():
    tied, untied = _model("gpt-tiny"), _model("gpt-tiny", tie_embeddings=False)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(untied) - count(tied) == 64 * 32
    assert "lm_head.weight" in tied.state_dict()


def test_gqa_shrinks_key_value_projections():
    model = _model("llama-tiny")
    attn = model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (32, 32) and attn.k_proj.weight.shape == (16, 32)
    assert [n for n, _ in model.layers[0].mlp.named_children()] == [
        "gate_proj",
        "up_proj",
        "down_proj",
    ]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("llama-2-7b", 6_738_415_616),
        ("llama-3.1-8b", 8_030_261_248),
        ("gpt3-175b", 174_604_259_328),
        ("bert-base-uncased", 109_482_240),
        ("all-minilm-l6-v2", 22_713_216),
    ],
)
def test_real_sizes_count_exactly_on_meta(name, expected):
    tracemalloc.start()
    model = configs.build(name, backend="meta")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sum(p.numel() for p in model.parameters()) == expected
    assert peak < 50e6  # shapes only: 8e9 float32 weights would be 32 GB


def test_meta_build_is_fast_enough_to_count_interactively():
    start = time.perf_counter()
    configs.build("llama-3.1-8b", backend="meta")
    # not a benchmark: a loose bound that fails only if building allocates or loops per weight
    assert time.perf_counter() - start < 5.0


def test_bad_configs_and_inputs_name_the_problem():
    with pytest.raises(ValueError, match="norm must be one of"):
        GPTConfig(vocab_size=8, context_length=8, dim=8, n_layers=1, n_heads=2, norm="batch")
    with pytest.raises(ValueError, match="divisible by n_kv_heads"):
        GPTConfig(vocab_size=8, context_length=8, dim=8, n_layers=1, n_heads=4, n_kv_heads=3)
    with pytest.raises(KeyError, match="unknown model config 'gpt5'"):
        configs.get("gpt5")
    model = _model("gpt-tiny")
    with pytest.raises(ValueError, match="exceed the learned positions"):
        model(_ids((1, 33)))
    with pytest.raises(ValueError, match="integer"):
        model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, past \+ T\)"):
        model(_ids((2, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="top_p"):
        model.generate(_ids((1, 2)), 2, do_sample=True, top_p=1.5)


def test_a_few_steps_learn_a_repeating_sequence():
    model = _model("llama-tiny")
    opt = mf.optim.AdamW(model.parameters(), lr=1e-2)
    ids = np.tile(np.arange(8), (4, 3))[:, :24]
    losses = []
    for _ in range(30):
        loss = mf.functional.cross_entropy(model(ids[:, :-1]), mf.tensor(ids[:, 1:]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("name", SHAPES)
def test_inputs_embeds_replace_the_token_lookup(name):
    model = _model(name)
    ids = _ids((2, 6))
    embeds = model.embed_tokens(ids)
    np.testing.assert_allclose(model(inputs_embeds=embeds).numpy(), model(ids).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match=r"inputs_embeds must be \(B, T, 32\)"):
        model(inputs_embeds=embeds[..., :8])
