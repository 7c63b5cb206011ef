import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from prunelab import bitpack, export
from prunelab.export import ExportError, dense_bytes, load_sparse, save_sparse
from prunelab.models import ModelConfig, build_model
from prunelab.prune import PruneMethod, prune
from prunelab.prune.nm import NM
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import TrainConfig

HAS_ONNX = importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_sparse_file_rebuilds_the_same_model(tmp_path, name):
    config = ModelConfig(name=name, hidden=(64, 32) if name == "mlp" else None)
    model = build_model(config, seed=0)
    prune(model, PruneMethod("weight"), 0.9)
    size = save_sparse(model, config, tmp_path / "m.safetensors")
    assert size == (tmp_path / "m.safetensors").stat().st_size
    loaded, loaded_config = load_sparse(tmp_path / "m.safetensors")
    assert loaded_config == config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_sparse_float16_file_is_smaller_and_close(tmp_path):
    config = ModelConfig(hidden=(300, 100))
    model = build_model(config, seed=0)
    prune(model, PruneMethod("weight"), 0.98)
    small = save_sparse(model, config, tmp_path / "h.safetensors", dtype=torch.float16)
    full = save_sparse(model, config, tmp_path / "f.safetensors")
    assert small < full < dense_bytes(model) / 10
    loaded, _ = load_sparse(tmp_path / "h.safetensors")
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), atol=1e-2, rtol=1e-2)


def test_codebook_file_keeps_zeros_and_shares_values(tmp_path):
    config = ModelConfig(hidden=(300, 100))
    model = build_model(config, seed=0)
    prune(model, PruneMethod("weight"), 0.95)
    plain = save_sparse(model, config, tmp_path / "p.safetensors", dtype=torch.float16)
    shared = save_sparse(model, config, tmp_path / "c.safetensors", codebook_bits=5)
    assert shared < plain
    loaded, _ = load_sparse(tmp_path / "c.safetensors")
    for name, before in model.state_dict().items():
        after = loaded.state_dict()[name]
        if before.dim() == 2:
            assert torch.equal(after != 0, before != 0), name  # the same weights pruned
            assert len(after[after != 0].unique()) <= 31
            assert (after - before).abs().max() < (before.max() - before.min()) / 31
        else:
            assert torch.equal(after, before), name
    with pytest.raises(ValueError, match="1 to 8 bits"):
        save_sparse(model, config, tmp_path / "x.safetensors", codebook_bits=9)
    stored = safetensors.torch.load_file(tmp_path / "c.safetensors")
    for name in ("1.weight", "3.weight"):  # 5 bits a code, packed
        codes, gaps = stored[f"{name}.codes"], stored[f"{name}.gaps"]
        assert codes.numel() == -(-len(gaps) * 5 // 8)


def test_a_codebook_file_of_one_byte_codes_still_loads(tmp_path):
    """Files written before codes were packed held a uint8 per code, and no code_bits."""
    config = ModelConfig(hidden=(32,))
    model = build_model(config, seed=0)
    prune(model, PruneMethod("weight"), 0.9)
    save_sparse(model, config, tmp_path / "new.st", codebook_bits=3)
    blob = (tmp_path / "new.st").read_bytes()
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    tensors = safetensors.torch.load(blob)
    for name in ("1.weight", "3.weight"):
        tensors[f"{name}.codes"] = torch.from_numpy(
            bitpack.unpack(tensors[f"{name}.codes"].numpy(), 3, len(tensors[f"{name}.gaps"]))
        )
    old = {key: value for key, value in header.items() if key != "code_bits"}
    old["sha256"] = export._digest(tensors)
    (tmp_path / "old.st").write_bytes(safetensors.torch.save(tensors, metadata=old))
    for name, value in load_sparse(tmp_path / "old.st")[0].state_dict().items():
        assert torch.equal(value, load_sparse(tmp_path / "new.st")[0].state_dict()[name])


def test_truncated_or_tampered_files_are_refused(tmp_path):
    config = ModelConfig(hidden=(16,))
    model = build_model(config, seed=0)
    path = tmp_path / "m.safetensors"
    save_sparse(model, config, path)
    blob = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ExportError, match="not a readable"):
        load_sparse(tmp_path / "cut.safetensors")
    tampered = bytearray(blob)
    tampered[-3] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(tampered))
    with pytest.raises(ExportError, match="checksum"):
        load_sparse(tmp_path / "bad.safetensors")
    with pytest.raises(ExportError, match="not a readable"):
        load_sparse(tmp_path / "missing.safetensors")


FIXTURES = Path(__file__).parent / "fixtures" / "sparse-0.2.0"


# the SHA-256 of the state dict that 0.2.0 loaded from each file
LOADED_BY_0_2_0 = {
    "plain": "fd7fed167bdf793d322753fe25550d8680d3fac16616772665e4a783c1fe46fb",
    "codebook": "aa2ca75a251fec878666889a2aaaa645dbcc4965ce614237baaefc204d344d72",
}


@pytest.mark.parametrize("name", LOADED_BY_0_2_0)
def test_files_written_before_entropy_coding_load_as_they_did(name):
    model, _ = load_sparse(FIXTURES / f"{name}.safetensors")
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    assert digest.hexdigest() == LOADED_BY_0_2_0[name]


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_huffman_file_rebuilds_the_same_model_and_is_smaller(tmp_path, name):
    config = ModelConfig(name=name, hidden=(64, 32) if name == "mlp" else None)
    model = build_model(config, seed=0)
    prune(model, PruneMethod("weight"), 0.9)
    for bits in (None, 4):
        plain = save_sparse(model, config, tmp_path / "p.st", codebook_bits=bits)
        coded = save_sparse(model, config, tmp_path / "h.st", codebook_bits=bits,
                            entropy="huffman")  # fmt: skip
        assert coded < plain
        expected = model if bits is None else load_sparse(tmp_path / "p.st")[0]
        loaded, loaded_config = load_sparse(tmp_path / "h.st")
        assert loaded_config == config
        for key, value in expected.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (bits, key)


def rewritten(path: Path, tensors: dict, metadata: dict) -> Path:
    """The file with its checksum recomputed: damage that the checksum would not catch."""
    metadata = {**metadata, "sha256": export._digest(tensors)}
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    return path


def test_a_damaged_huffman_file_is_refused(tmp_path):
    config = ModelConfig(hidden=(64,))
    model = build_model(config, seed=0)
    prune(model, PruneMethod("weight"), 0.9)
    save_sparse(model, config, tmp_path / "m.st", codebook_bits=4, entropy="huffman")
    blob = (tmp_path / "m.st").read_bytes()
    damaged = bytearray(blob)
    damaged[-100] ^= 0x10  # in the last tensor's stream
    (tmp_path / "flipped.st").write_bytes(bytes(damaged))
    with pytest.raises(ExportError, match="checksum"):
        load_sparse(tmp_path / "flipped.st")
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    coded = json.loads(header["coded"])
    entries, gap_symbols = coded["1.weight"]
    stored = safetensors.torch.load(blob)["1.weight.huffman"]
    table = -(-(16 + gap_symbols) // 2)  # 4 bits for each code's length and each gap's

    def damaged(data: torch.Tensor) -> dict:
        return {**safetensors.torch.load(blob), "1.weight.huffman": data}

    def layout(value) -> dict:
        return {**header, "coded": json.dumps({**coded, "1.weight": value})}

    overfull = torch.cat([torch.full((table,), 0x11, dtype=torch.uint8), stored[table:]])
    cases = [
        (damaged(stored[:-20]), header, "does not hold its"),
        (damaged(torch.cat([stored, torch.zeros(2).byte()])), header, "longer than its"),
        (damaged(overfull), header, "prefix code"),
        (damaged(stored), layout([entries + 50, gap_symbols]), "does not hold its"),
        (damaged(stored), layout([entries, 10**6]), "cannot hold"),
        (damaged(stored), layout("x"), "'x' is not"),
        (damaged(stored), {**header, "coded": "{"}, "cannot be read"),
        (damaged(stored), {**header, "entropy": "zstd"}, "unknown entropy coder 'zstd'"),
    ]
    for i, (tensors, metadata, message) in enumerate(cases):
        with pytest.raises(ExportError, match=message):
            load_sparse(rewritten(tmp_path / f"{i}.st", tensors, metadata))
    with pytest.raises(ValueError, match="choose from huffman"):
        save_sparse(model, config, tmp_path / "x.st", entropy="zstd")
    with pytest.raises(ValueError, match="needs sparse storage"):
        save_sparse(model, config, tmp_path / "x.st", sparse=False, entropy="huffman")


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed"
)
def test_onnx_export_of_a_compacted_cnn_runs_in_onnxruntime_with_any_batch(tmp_path):
    from prunelab.compact import compact
    from prunelab.onnx_format import OnnxModel, save_onnx

    model = build_model(ModelConfig(name="lenet5"), seed=0)
    prune(model, PruneMethod("unit"), 0.5)
    small = compact(model)
    x = torch.rand(7, 1, 28, 28)
    assert save_onnx(small, tmp_path / "m.onnx", x) > 0
    with torch.no_grad():
        torch.testing.assert_close(
            OnnxModel(tmp_path / "m.onnx")(x), small(x), atol=1e-5, rtol=1e-5
        )


@pytest.fixture(scope="module")
def unit_run(tiny_data_dir, tmp_path_factory) -> Path:
    """A finished study of one small cell: unit pruning at k = 0.5."""
    out = tmp_path_factory.mktemp("export") / "run"
    config = StudyConfig(val_size=100, model=ModelConfig(hidden=(32,)), methods=("unit",),
                         ks=(0.5,), train=TrainConfig(epochs=1),
                         finetune=TrainConfig(epochs=1))  # fmt: skip
    run_study(config, RunOptions(out=out, data_dir=tiny_data_dir, device="cpu"))
    return out


@pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")
def test_onnx_export_at_float16_stores_float16_weights_and_computes_in_float32(
    unit_run, tiny_data_dir, tmp_path
):
    import onnx

    from prunelab.onnx_format import OnnxModel, save_onnx

    full, half = (export.export_cell(unit_run, "unit", 0.5, "onnx", tmp_path / f"{name}.onnx",
                                     dtype=dtype, data_dir=tiny_data_dir)
                  for name, dtype in (("f", torch.float32), ("h", torch.float16)))  # fmt: skip
    assert half.bytes < 0.7 * full.bytes
    assert abs(half.test_metric - full.test_metric) < 0.02
    weights = [t for t in onnx.load(half.path).graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    x = torch.rand(5, 1, 28, 28)
    y = OnnxModel(half.path)(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, OnnxModel(full.path)(x), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="float32 or float16, not torch.bfloat16"):
        save_onnx(torch.nn.Linear(2, 2), tmp_path / "b.onnx", x, dtype=torch.bfloat16)


def test_a_k_just_off_the_runs_is_said_with_all_its_digits(unit_run, tmp_path):
    with pytest.raises(ValueError, match=r"k=0\.5000001 is not in this run; it has 0\.5$"):
        export.export_cell(unit_run, "unit", 0.5000001, "sparse", tmp_path / "x.st")


def _two_of_four(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    prune(model, "weight@2:4", 0.5)
    return model


def test_save_sparse_takes_an_n_m_pattern_as_a_string(tmp_path):
    model = _two_of_four()
    save_sparse(model, None, tmp_path / "s.st", pattern="2:4")
    save_sparse(model, None, tmp_path / "p.st", pattern=NM(2, 4))
    given, parsed = (safetensors.torch.load_file(tmp_path / n) for n in ("s.st", "p.st"))
    assert "0.weight.nm_places" in given and given.keys() == parsed.keys()
    assert all(torch.equal(given[name], parsed[name]) for name in given)
    with pytest.raises(ValueError, match="'2x4' is not an N:M pattern such as '2:4'"):
        save_sparse(model, None, tmp_path / "x.st", pattern="2x4")
    with pytest.raises(TypeError, match="an NM or a string such as '2:4', not tuple"):
        save_sparse(model, None, tmp_path / "x.st", pattern=(2, 4))


def test_a_codebook_keeps_the_n_m_format_and_shares_its_values(tmp_path):
    model = _two_of_four()
    both = save_sparse(model, None, tmp_path / "b.st", codebook_bits=4, pattern="2:4")
    shared = save_sparse(model, None, tmp_path / "c.st", codebook_bits=4)
    assert both < shared < save_sparse(model, None, tmp_path / "n.st", pattern="2:4")
    stored = safetensors.torch.load_file(tmp_path / "b.st")
    assert {"0.weight.nm_codes", "0.weight.nm_places", "0.weight.codebook"} <= set(stored)
    assert "0.weight.gaps" not in stored and "0.weight.nm_values" not in stored
    codes = 32 * 64 // 2  # 2 of every 4 weights, 4 bits each
    assert stored["0.weight.nm_codes"].numel() == codes * 4 // 8
    loaded, _ = load_sparse(tmp_path / "b.st", into=_two_of_four(seed=1))
    csr, _ = load_sparse(tmp_path / "c.st", into=_two_of_four(seed=1))
    for name, before in model.state_dict().items():
        after = loaded.state_dict()[name]
        if before.dim() == 2:
            assert torch.equal(after != 0, before != 0), name
            assert len(after[after != 0].unique()) <= 15
        torch.testing.assert_close(after, csr.state_dict()[name])
