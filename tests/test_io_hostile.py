"""Crafted bad safetensors files: each must raise SafetensorsError naming the problem, the file
and the tensor; and a fuzz loop over a valid file must never raise anything else."""

import json

import numpy as np
import pytest

from minift.io import SafetensorsError, load, load_file, read_metadata, save


def _file(header, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict, or raw bytes used as is) and a data area."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def _f32(offsets, shape=(1,), **extra):
    return {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets), **extra}


VALID = _file({"a": _f32([0, 8], [2])}, bytes(8))

# (id, file bytes, message fragment, tensor the message must name or None)
CASES = [
    ("empty file", b"", "shorter than the 8-byte", None),
    ("truncated length", b"\x10\x00\x00", "shorter than the 8-byte", None),
    ("header length 0", _file(b"{}", length=0), "header length is 0", None),
    ("header too long", _file(b"{}", length=100_000_001), "too large", None),
    ("header beyond file", _file(b"{}", length=4096), "beyond the end of the file", None),
    ("truncated header", VALID[:20], "beyond the end of the file", None),
    ("bad utf-8", _file(b'{"a\xff": 1}'), "not valid UTF-8", None),
    ("bad json", _file(b'{"a": '), "not valid JSON", None),
    ("json nan", _file(b'{"a": NaN'), "not valid JSON", None),
    ("too deeply nested", _file(b"[" * 200_000), "not valid JSON", None),
    ("number too long", _file(b'{"a": ' + b"9" * 5000 + b"}"), "not valid JSON", None),
    ("json array", _file(b"[1, 2]"), "must be a JSON object, got a JSON array", None),
    ("json string", _file(b'"hi"'), "got a JSON string", None),
    ("entry not object", _file({"a": [0, 4]}, bytes(4)), "entry must be a JSON object", "a"),
    ("missing field", _file({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)),
     "missing ['data_offsets']", "a"),
    ("extra field", _file({"a": _f32([0, 4], offset=0)}, bytes(4)), "unexpected ['offset']", "a"),
    ("unknown dtype", _file({"a": {**_f32([0, 1]), "dtype": "F8_E4M3"}}, bytes(1)),
     "unknown or unsupported dtype 'F8_E4M3'", "a"),
    ("dtype not string", _file({"a": {**_f32([0, 4]), "dtype": ["F32"]}}, bytes(4)),
     "unknown or unsupported dtype", "a"),
    ("negative shape", _file({"a": _f32([0, 4], [-1])}, bytes(4)), "non-negative integers", "a"),
    ("float shape", _file({"a": _f32([0, 4], [1.0])}, bytes(4)), "non-negative integers", "a"),
    ("bool shape", _file({"a": _f32([0, 4], [True])}, bytes(4)), "non-negative integers", "a"),
    ("shape not list", _file({"a": {**_f32([0, 4]), "shape": 1}}, bytes(4)),
     "shape must be a list", "a"),
    ("too many dims", _file({"a": _f32([0, 4], [1] * 33)}, bytes(4)), "33 dimensions", "a"),
    ("one offset", _file({"a": _f32([4])}, bytes(4)), "two integers [begin, end]", "a"),
    ("float offsets", _file({"a": _f32([0, 4.0])}, bytes(4)), "two integers", "a"),
    ("negative begin", _file({"a": _f32([-4, 0])}, bytes(4)), "0 <= begin <= end", "a"),
    ("begin > end", _file({"a": _f32([8, 4])}, bytes(8)), "0 <= begin <= end", "a"),
    ("offsets out of range", _file({"a": _f32([0, 400], [100])}, bytes(4)),
     "past the end of the data area", "a"),
    ("truncated data", VALID[:-4], "past the end of the data area (4 bytes; truncated", "a"),
    ("size mismatch", _file({"a": _f32([0, 4], [2])}, bytes(4)), "needs 8 bytes", "a"),
    ("shape x dtype overflow",
     _file({"a": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)),
     "needs 9671406556917033397649408 bytes", "a"),
    ("huge dims that wrap to 0 in int64",
     _file({"a": {"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}),
     "needs 18446744073709551616 bytes", "a"),
    ("empty tensor with huge dims",
     _file({"a": {"dtype": "F64", "shape": [0, 2**62, 4], "data_offsets": [0, 0]}}),
     "too large for any array", "a"),
    ("overlap", _file({"a": _f32([0, 8], [2]), "b": _f32([4, 12], [2])}, bytes(12)),
     "overlaps tensor 'a'", "b"),
    ("hole", _file({"a": _f32([0, 4]), "b": _f32([8, 12])}, bytes(12)),
     "hole in the data area: bytes 4..8", "b"),
    ("unclaimed tail", _file({"a": _f32([0, 4])}, bytes(8)), "MetadataIncompleteBuffer", None),
    ("data but no tensors", _file({}, bytes(8)), "last 8 bytes", None),
    ("duplicate key", _file(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
                            b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                            bytes(4)), "duplicate key 'a'", None),
    ("duplicate field", _file(b'{"a": {"dtype": "F32", "dtype": "I32", "shape": [1],'
                              b' "data_offsets": [0, 4]}}', bytes(4)),
     "duplicate key 'dtype'", None),
    ("metadata not object", _file({"__metadata__": ["x"]}), "'__metadata__' must be an object",
     None),
    ("metadata value not string", _file({"__metadata__": {"k": 1}}),
     "'__metadata__' value of 'k' must be a string", None),
    ("bool byte 2", _file({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}},
                          b"\x01\x02"), "BOOL bytes must be 0 or 1, found 2", "m"),
]


@pytest.mark.parametrize("data, fragment, tensor", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_crafted_bad_file_raises_a_named_error(data, fragment, tensor, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    for read in (load_file, lambda p: load_file(p, mmap=False)):
        with pytest.raises(SafetensorsError) as info:
            read(path)
        message = str(info.value)
        assert fragment in message and str(path) in message, message
        assert tensor is None or f"tensor {tensor!r}" in message, message
    with pytest.raises(SafetensorsError, match="<bytes>"):
        load(data)
    assert issubclass(SafetensorsError, ValueError)


def test_read_metadata_validates_the_whole_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_file({"__metadata__": {"k": "v"}, "a": _f32([0, 8])}, bytes(8)))
    with pytest.raises(SafetensorsError, match="needs 4 bytes"):
        read_metadata(path)


def test_empty_tensors_may_share_an_offset_and_the_data_area_may_be_empty():
    data = _file({"e1": _f32([0, 0], [0]), "a": _f32([0, 4]), "e2": _f32([4, 4], [2, 0]),
                  "e3": _f32([4, 4], [0])}, bytes(4))
    assert {k: v.shape for k, v in load(data).items()} == {
        "e1": (0,), "a": (1,), "e2": (2, 0), "e3": (0,)}
    assert load(_file({})) == {}


def _mutations(valid: bytes, rng, count: int):
    """Byte flips (mostly in the length and header), truncations, insertions, deletions."""
    n = 8 + int.from_bytes(valid[:8], "little")
    for _ in range(count):
        data = bytearray(valid)
        kind = rng.integers(5)
        if kind <= 1:  # flip a byte in the length field and header (twice as often)
            data[rng.integers(n)] ^= int(rng.integers(1, 256))
        elif kind == 2:
            data[rng.integers(len(data))] = int(rng.integers(256))
        elif kind == 3:
            del data[rng.integers(len(data) + 1):]
        else:
            at = int(rng.integers(len(data)))
            data[at:at + int(rng.integers(2))] = bytes(rng.integers(256, size=rng.integers(3)))
        yield bytes(data)


EDGE_VALUES = [-1, 0, 1, 3, 7, 8, 2**31, 2**63, 2**64, 3.5, None, "F32", "BF16", [], [0],
               [1, 2], [2**62, 4], [0, 2**64], True, {}]


def _header_mutations(valid: bytes, rng, count: int):
    """Well-formed JSON with one field or offset of one entry set to an edge value."""
    n = 8 + int.from_bytes(valid[:8], "little")
    header = json.loads(valid[8:n])
    names = [k for k in header if k != "__metadata__"]
    for _ in range(count):
        mutated = json.loads(json.dumps(header))
        entry = mutated[names[rng.integers(len(names))]]
        field = ["dtype", "shape", "data_offsets"][rng.integers(3)]
        value = EDGE_VALUES[rng.integers(len(EDGE_VALUES))]
        if isinstance(entry[field], list) and entry[field] and rng.random() < 0.5:
            entry[field][rng.integers(len(entry[field]))] = value
        else:
            entry[field] = value
        yield _file(mutated, valid[n:])


def test_fuzzed_files_only_ever_load_or_raise_safetensors_error(tmp_path):
    rng = np.random.default_rng(20240607)
    valid = save({"w": rng.standard_normal((3, 4)).astype(np.float32),
                  "ids": np.arange(5, dtype=np.int64), "mask": np.array([True, False]),
                  "half": np.float16([1, 2]), "bf": np.float32([0.5, -1.0]),
                  "empty": np.zeros((0, 2)), "s": np.float64(3.0)},
                 metadata={"format": "pt"}, dtype={"bf": "BF16"})
    outcomes = {"loaded": 0, "rejected": 0}
    mutations = [*_mutations(valid, rng, 400), *_header_mutations(valid, rng, 200)]
    for i, data in enumerate(mutations):
        try:
            tensors = load(data)
            if i % 10 == 0:  # the file path (mmap) too, on a sample
                (tmp_path / "f.safetensors").write_bytes(data)
                load_file(tmp_path / "f.safetensors")
        except SafetensorsError:
            outcomes["rejected"] += 1
            continue
        assert sum(t.nbytes for t in tensors.values()) <= 2 * len(data)  # BF16 widens 2x
        outcomes["loaded"] += 1
    assert outcomes["loaded"] > 20 and outcomes["rejected"] > 100, outcomes
