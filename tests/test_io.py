"""minift.io: safetensors round trips, the reference library's file, BF16, mmap, atomic writes
and checkpoints. Crafted bad files live in test_io_hostile.py."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import minift as mf
from minift.io import (
    SafeFile,
    load,
    load_checkpoint,
    load_file,
    read_metadata,
    save,
    save_checkpoint,
    save_file,
)

FIXTURE = Path(__file__).parent / "fixtures" / "reference.safetensors"
DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8",
          "uint64", "uint32", "uint16", "uint8", "bool"]
SHAPES = [(), (0,), (3, 0, 2), (5,), (2, 3, 4)]


class FailingArray:
    """Describes itself like an array but fails when its values are asked for."""

    shape = (3,)
    dtype = np.dtype(np.float32)

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("conversion failed")


def _sample(dtype: str, shape: tuple, rng) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def _header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype_and_shape(dtype, shape, rng, tmp_path):
    array = _sample(dtype, shape, rng)
    path = tmp_path / "t.safetensors"
    save_file({"x": array}, path)
    for loaded in (load_file(path), load_file(path, mmap=False), load(save({"x": array}))):
        assert loaded["x"].dtype == array.dtype and loaded["x"].shape == shape
        np.testing.assert_array_equal(loaded["x"], array)


def test_non_contiguous_and_foreign_inputs_are_stored_c_contiguous_little_endian(rng):
    base = rng.standard_normal((4, 6))
    tensors = {
        "transposed": base.T, "strided": base[::2, ::3], "negative_stride": base[::-1],
        "big_endian": base.astype(">f4"), "tensor": mf.tensor(base[:2]),
        "list": [[1, 2], [3, 4]], "numpy_scalar": np.float16(1.5),
    }
    loaded = load(save(tensors))
    for name, value in tensors.items():
        expected = value.numpy() if isinstance(value, mf.Tensor) else np.asarray(value)
        assert loaded[name].dtype == expected.dtype.newbyteorder("=")
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
    assert _header(save({"b": base.astype(">f4")}))["b"]["dtype"] == "F32"


def test_header_is_padded_to_8_bytes_and_tensors_start_aligned(rng):
    data = save({"a": np.ones(3, np.int8), "b": np.ones(3, np.float64), "c": np.ones(1, np.int16)})
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0 and data[8 + n - 1 : 8 + n] in (b" ", b"}")
    for entry in _header(data).values():
        itemsize = {"I8": 1, "F64": 8, "I16": 2}[entry["dtype"]]
        assert entry["data_offsets"][0] % itemsize == 0


def test_load_returns_the_writers_order_and_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"z": np.zeros(2), "a": np.ones(3, np.int32), "m": np.array(True)}
    save_file(tensors, path, metadata={"format": "pt", "note": "ünïcode"})
    assert list(load_file(path)) == ["z", "a", "m"]
    assert read_metadata(path) == {"format": "pt", "note": "ünïcode"}
    save_file(tensors, path)
    assert read_metadata(path) is None
    assert load(save({})) == {}


def test_mmap_read_is_read_only_and_shares_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.arange(4, dtype=np.float32)}, path)
    mapped, copied = load_file(path)["w"], load_file(path, mmap=False)["w"]
    assert not mapped.flags.writeable and copied.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        mapped[0] = 1.0
    with open(path, "r+b") as f:  # change the last float in the file itself
        f.seek(-4, os.SEEK_END)
        f.write(np.float32(99.0).tobytes())
    assert mapped[-1] == 99.0  # the view sees the file: no copy was made
    assert copied[-1] == 3.0


def test_bf16_is_read_as_float32_by_widening_known_bit_patterns():
    bits = np.array([0x3F80, 0xC020, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x3E20], dtype="<u2")
    header = json.dumps({"b": {"dtype": "BF16", "shape": [7], "data_offsets": [0, 14]}}).encode()
    header += b" " * (-len(header) % 8)
    data = len(header).to_bytes(8, "little") + header + bits.tobytes() + b""
    got = load(data)["b"]
    expected = [1.0, -2.5, np.inf, -np.inf, 2.0**-133, -0.0, 0.15625]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.float32(expected))
    assert np.signbit(got[5])


def test_bf16_write_rounds_to_nearest_even_like_torch():
    reference = load_file(FIXTURE)
    ours = load(save({"b": reference["bf16_source"]}, dtype="BF16"))["b"]
    np.testing.assert_array_equal(ours, reference["bf16_rounded"])  # NaN == NaN here
    finite = np.isfinite(reference["bf16_source"])
    assert (ours.view(np.uint32)[finite] == reference["bf16_rounded"].view(np.uint32)[finite]).all()


def test_bf16_only_when_asked_and_only_for_floats():
    tensors = {"w": np.float32([0.1]), "ids": np.arange(3), "h": np.float64([1 / 3])}
    assert {e["dtype"] for e in _header(save(tensors)).values()} == {"F32", "I64", "F64"}
    header = _header(save(tensors, dtype="BF16"))
    assert [header[k]["dtype"] for k in tensors] == ["BF16", "I64", "BF16"]
    assert _header(save(tensors, dtype={"w": "F16"}))["h"]["dtype"] == "F64"
    with pytest.raises(TypeError, match="ids"):
        save(tensors, dtype={"ids": "BF16"})
    with pytest.raises(ValueError, match="not being saved"):
        save(tensors, dtype={"nope": "BF16"})
    with pytest.raises(ValueError, match="must be one of"):
        save(tensors, dtype="bf16")


def test_file_written_by_the_official_library_loads_with_the_right_values():
    got = load_file(FIXTURE)
    assert read_metadata(FIXTURE) == {"format": "pt", "made_by": "make_safetensors_fixture.py"}
    expected = {
        "f64": np.arange(6, dtype=np.float64).reshape(2, 3) / 4 - 0.5,
        "f32": np.float32([[1.5, -2.25], [3e-3, 1e10]]),
        "f16": np.float16([0.5, -1.0, 65504.0, 2.0**-14]),
        "bf16": np.float32([1.0, -2.5, 3.140625, 65280.0, np.inf, -0.0]),
        "i64": np.array([-(2**63), 2**63 - 1, 0], np.int64),
        "i32": np.array([[-(2**31), 2**31 - 1]], np.int32),
        "i16": np.array([-32768, 32767], np.int16), "i8": np.array([-128, 127, 0], np.int8),
        "u8": np.array([0, 1, 255], np.uint8), "u16": np.array([0, 65535], np.uint16),
        "u32": np.array([2**32 - 1], np.uint32), "u64": np.array([2**64 - 1], np.uint64),
        "bool": np.array([True, False, True]), "scalar": np.float32(7.0),
        "empty": np.zeros((0, 4), np.float32),
    }
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_safe_file_is_lazy_keyed_access(tmp_path):
    path = tmp_path / "s.safetensors"
    save_file({"a": np.arange(3), "b": np.eye(2)}, path, metadata={"k": "v"})
    with SafeFile(path) as f:
        assert f.keys() == ["a", "b"] and f.metadata() == {"k": "v"}
        b = f.get_tensor("b")
        with pytest.raises(KeyError, match="no tensor 'c'"):
            f.get_tensor("c")
    with pytest.raises(ValueError, match="closed"):
        f.get_tensor("a")
    np.testing.assert_array_equal(b, np.eye(2))  # still valid after the file object closed


def test_writer_rejects_what_safetensors_cannot_hold():
    with pytest.raises(TypeError, match="complex128"):
        save({"c": np.ones(2, complex)})
    with pytest.raises(ValueError, match="__metadata__"):
        save({"__metadata__": np.ones(1)})
    with pytest.raises(TypeError, match="metadata must map str to str"):
        save({"a": np.ones(1)}, metadata={"n": 1})


def test_atomic_write_keeps_the_old_file_when_writing_fails_midway(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones(4)}, path)
    before = path.read_bytes()
    # sorted widest-first, "big" is written before "z" fails: the failure is mid-file
    with pytest.raises(RuntimeError, match="conversion failed"):
        save_file({"big": np.zeros(1000), "z": FailingArray()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left behind


def test_atomic_write_gives_new_files_the_usual_permissions(tmp_path):
    save_file({"w": np.ones(1)}, tmp_path / "a.safetensors")
    (tmp_path / "b").write_bytes(b"")
    assert (tmp_path / "a.safetensors").stat().st_mode == (tmp_path / "b").stat().st_mode


def _assert_same(a, b, where="state"):
    """Equal values AND equal types all the way down (tuples stay tuples, int keys int)."""
    if isinstance(a, (np.ndarray, mf.Tensor)):
        a = a.numpy() if isinstance(a, mf.Tensor) else a
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype, where
        np.testing.assert_array_equal(b, a, err_msg=where)
        return
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), where


def _states(rng):
    model = {"embed.weight": mf.tensor(rng.standard_normal((5, 3))),
             "head.bias": rng.standard_normal(3).astype(np.float32), "steps": np.array(3)}
    optimizer = {
        "state": {0: {"step": 3, "exp_avg": rng.standard_normal((5, 3)),
                      "exp_avg_sq": rng.random((5, 3))},
                  1: {"step": 3.0, "momentum_buffer": None}, 2: {}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                          "weight_decay": 0.0, "amsgrad": False, "params": [0, 1, 2]}],
    }
    trainer = {"global_step": 3, "epoch": 0.5, "best_loss": float("nan"),
               "log": [{"loss": 1.25}], "rng": {"seed": 1234, "state": (1, 2)},
               "by_step": {10: "ckpt-10"}, "__tuple__": "a plain key that looks like a tag"}
    return model, optimizer, trainer


def test_checkpoint_round_trip_rebuilds_the_same_structures(rng, tmp_path):
    model, optimizer, trainer = _states(rng)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, trainer)
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    assert "state.0.exp_avg" in load_file(tmp_path / "ckpt" / "optimizer.safetensors")
    model2, optimizer2, trainer2 = load_checkpoint(tmp_path / "ckpt")
    _assert_same(model, model2, "model")
    _assert_same(optimizer, optimizer2, "optimizer")
    _assert_same(trainer, trainer2, "trainer")
    assert optimizer2["state"][0]["exp_avg"].flags.writeable  # ready for in-place updates
    save_checkpoint(tmp_path / "bare", model, None, {"step": 0})
    assert load_checkpoint(tmp_path / "bare")[1] is None


def test_checkpoint_replaces_the_old_one_and_keeps_it_when_saving_fails(rng, tmp_path):
    model, optimizer, trainer = _states(rng)
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, optimizer, {"global_step": 1})
    save_checkpoint(folder, model, optimizer, {"global_step": 2})
    assert load_checkpoint(folder)[2] == {"global_step": 2}
    with pytest.raises(RuntimeError, match="conversion failed"):
        save_checkpoint(folder, {"w": np.ones(8), "x": FailingArray()}, optimizer, trainer)
    with pytest.raises(TypeError, match="trainer_state.rng"):
        save_checkpoint(folder, model, optimizer, {"rng": np.ones(2)})
    assert load_checkpoint(folder)[2] == {"global_step": 2}
    assert os.listdir(tmp_path) == ["ckpt"]  # neither .tmp- nor .old- folders remain


def test_missing_checkpoint_names_a_complete_leftover(rng, tmp_path):
    model, optimizer, trainer = _states(rng)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, trainer)
    os.rename(tmp_path / "ckpt", tmp_path / "ckpt.tmp-999")  # a crash between the two renames
    with pytest.raises(FileNotFoundError, match=r"ckpt\.tmp-999"):
        load_checkpoint(tmp_path / "ckpt")
