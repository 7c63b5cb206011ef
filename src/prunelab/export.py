"""Sparse storage: keep only the non-zero weights of a pruned model, in safetensors.

Each 2-D (or conv) weight is stored row by row in CSR form (``csr_format``): the
non-zero values (float32 or float16), the gap from each value's column to the
previous one's as uint8 (a gap over 255 is bridged by explicit zero entries, as
in Deep Compression), and the number of entries per row. Every other tensor is
stored whole. The metadata holds the model's configuration, so ``load_sparse``
rebuilds an ordinary ``nn.Module``, and a SHA-256 of all tensors, so a damaged
or edited file is refused rather than loaded with wrong weights.

``export_cell`` writes the model of one (method, k) of a finished study in one of
``EXPORT_FORMS`` and checks what it wrote.

A weight pruned N:M (a scope such as ``2:4``) is stored as its N values per group
and their bit-packed places (``nm_format``) instead of CSR; with a codebook, the
values as bit-packed codes into the layer's codebook (not entropy coded).

The three stages of Deep Compression (Han, Mao and Dally 2016), each optional:
pruning is the study's; weight sharing (``codebook_bits``) stores each sparse
weight's values as codes of ``bits`` bits into a per-layer codebook of at most
2**bits - 1 centroids (``quantize``; code 0 is the exact zero of the gap fillers),
bit-packed (``bitpack``), the centroids optionally trained first
(``quantize.train_codebooks``, ``export_cell(codebook_epochs=...)``); and entropy
coding (``entropy="huffman"``) stores the gaps, over the flattened weight and
without row counts, and the codes as canonical Huffman codes (``entropy_format``),
the coder and each layer's layout named in the metadata. Files written before a
stage existed load as they did.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from prunelab import bitpack, csr_format, entropy_format, nm_format
from prunelab.bases import load_study_data
from prunelab.compact import CompactionError, compact
from prunelab.config import from_dict, to_dict
from prunelab.entropy_format import ENTROPY_CODERS
from prunelab.factories import is_factory
from prunelab.metrics import nonzero_parameters
from prunelab.models import ModelConfig, build_model, is_chain
from prunelab.onnx_format import OnnxModel, save_onnx
from prunelab.options import check_choice
from prunelab.paths import RunPaths
from prunelab.prune import PruneMethod
from prunelab.prune.nm import NM
from prunelab.quantize import share_values, train_codebooks
from prunelab.storage import ExportError, atomic_write_bytes, state_dict_bytes
from prunelab.study_config import RunOptions, StudyConfig, open_run
from prunelab.train import evaluate

FORMAT = "prunelab-sparse-1"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _store_weight(tensors: dict, name: str, param: torch.Tensor, dtype: torch.dtype,
                  codebook_bits: int | None, entropy: str | None) -> list[int] | None:  # fmt: skip
    """Put one weight's CSR tensors into ``tensors``; return the layout of its entropy
    coding (``entropy_format``), if any."""
    # entropy coded, the gaps run over the flattened weight and no row counts are stored
    values, gaps, counts = csr_format.encode(param if entropy is None else param.reshape(1, -1))
    codes = None
    if codebook_bits is None:
        tensors[f"{name}.values"] = torch.from_numpy(values).to(dtype)
    else:
        codebook, codes = share_values(values, codebook_bits)
        tensors[f"{name}.codebook"] = torch.from_numpy(codebook).to(dtype)
    if entropy is not None:
        tensors[f"{name}.huffman"], layout = entropy_format.encode(gaps, codes, codebook_bits)
        return layout
    if codes is not None:
        tensors[f"{name}.codes"] = torch.from_numpy(bitpack.pack(codes, codebook_bits))
    tensors[f"{name}.gaps"] = torch.from_numpy(gaps)
    tensors[f"{name}.counts"] = torch.from_numpy(counts)
    return None


def save_sparse(
    model: nn.Module,
    config: ModelConfig | None,
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    sparse: bool = True,
    codebook_bits: int | None = None,
    pattern: NM | str | None = None,
    entropy: str | None = None,
) -> int:
    """Write ``model``'s state dict (every tensor, keyed as the model keys it) keeping
    only the non-zero weights; return bytes. ``config``, for a built-in model, lets
    ``load_sparse`` rebuild it; any other model is loaded ``into`` an instance.

    With ``sparse=False`` every tensor is stored whole (for compacted models).
    With ``codebook_bits`` the sparse weights' values share a per-layer codebook.
    With an N:M ``pattern`` (an ``NM`` or a string such as ``"2:4"``), the weights that
    follow it are stored N:M (``nm_format``), their values shared too with a codebook.
    With ``entropy`` (one of ``ENTROPY_CODERS``) the CSR weights' gaps and codes are
    entropy coded (``entropy_format``).
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"values are stored as float32 or float16, not {dtype}")
    if codebook_bits is not None and not (1 <= codebook_bits <= 8 and sparse):
        raise ValueError("a codebook needs sparse storage and 1 to 8 bits per value")
    if entropy is not None:
        check_choice("entropy coder", entropy, ENTROPY_CODERS)
        if not sparse:
            raise ValueError("entropy coding needs sparse storage")
    pattern = _pattern(pattern)
    tensors, layout, nm, coded = {}, {}, {}, {}
    for name, param in model.state_dict().items():
        weight = sparse and name.endswith("weight") and param.dim() >= 2
        encoded = nm_format.encode(param, pattern) if weight and pattern is not None else None
        if encoded is not None:
            values, tensors[f"{name}.nm_places"] = encoded
            if codebook_bits is None:
                tensors[f"{name}.nm_values"] = values.to(dtype)
            else:
                codebook, codes = share_values(values.reshape(-1).numpy(), codebook_bits)
                tensors[f"{name}.codebook"] = torch.from_numpy(codebook).to(dtype)
                tensors[f"{name}.nm_codes"] = torch.from_numpy(bitpack.pack(codes, codebook_bits))
            nm[name] = [list(param.shape), pattern.n, pattern.m]
        elif weight:
            coded[name] = _store_weight(tensors, name, param, dtype, codebook_bits, entropy)
            layout[name] = list(param.shape)
        else:
            kept_type = dtype if param.is_floating_point() else param.dtype  # counters stay
            tensors[name] = param.detach().cpu().to(kept_type).contiguous()
    metadata = {
        "format": FORMAT,
        "model": json.dumps(to_dict(config) if config is not None else None),
        "sparse": json.dumps(layout),
        "nm": json.dumps(nm),
        # codes at the codebook's width (files before it held one byte each)
        "code_bits": str(codebook_bits) if codebook_bits is not None else "",
        "sha256": _digest(tensors),
    }
    if entropy is not None:  # files before entropy coding have neither key
        metadata.update(entropy=entropy, coded=json.dumps(coded))
    blob = save(tensors, metadata=metadata)
    atomic_write_bytes(path, blob)
    return len(blob)


def _pattern(pattern: NM | str | None) -> NM | None:
    """``save_sparse``'s pattern as an NM: a string such as ``"2:4"`` parsed."""
    if pattern is None or isinstance(pattern, NM):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern is an NM or a string such as '2:4', not {type(pattern).__name__}")
    parsed = NM.parse(pattern)
    if parsed is None:
        raise ValueError(f"pattern {pattern!r} is not an N:M pattern such as '2:4'")
    return parsed


def _shared_values(codebook: torch.Tensor, codes: np.ndarray, name: str) -> torch.Tensor:
    codes = torch.from_numpy(codes.astype(np.int64))
    if codes.numel() and int(codes.max()) >= len(codebook):
        raise ValueError(f"a code of {name} falls outside its codebook")
    return codebook.float()[codes]


def _load_weight(
    tensors: dict, name: str, shape: list[int], metadata: dict, coded: list[int] | None
) -> torch.Tensor:
    """One CSR weight back from its tensors: entropy coded (``coded``: its layout, of
    entries over the flattened weight) or not, its values shared through a codebook or
    not (codes packed at ``code_bits`` bits or, from files before packing, a byte each)."""
    code_bits = int(metadata.get("code_bits") or 0) or None
    shared = f"{name}.codebook" in tensors
    if metadata.get("entropy"):
        check_choice("entropy coder", metadata["entropy"], ENTROPY_CODERS)
        gaps, codes = entropy_format.decode(tensors[f"{name}.huffman"], coded,
                                            code_bits if shared else None)  # fmt: skip
        counts, rows = np.array([len(gaps)]), [1, int(np.prod(shape))]
    else:
        gaps, counts = tensors[f"{name}.gaps"].numpy(), tensors[f"{name}.counts"].numpy()
        codes, rows = tensors.get(f"{name}.codes"), shape
        if codes is not None:
            codes = codes.numpy()
            codes = bitpack.unpack(codes, code_bits, len(gaps)) if code_bits else codes
    if shared:
        values = _shared_values(tensors[f"{name}.codebook"], codes, name)
    else:
        values = tensors[f"{name}.values"].float()
    return csr_format.decode(values.numpy(), gaps, counts, rows).view(shape)


def _nm_values(tensors: dict, name: str, shape: list[int], pattern: NM, metadata: dict):
    """An N:M weight's values [rows, groups, N]: stored, or read through its codebook."""
    if f"{name}.codebook" not in tensors:
        return tensors[f"{name}.nm_values"]
    code_bits = int(metadata.get("code_bits") or 0)
    if not code_bits:
        raise ValueError(f"{name} has a codebook but the file gives no code_bits")
    rows, groups = shape[0], math.prod(shape[1:]) // pattern.m
    count = rows * groups * pattern.n
    codes = bitpack.unpack(tensors[f"{name}.nm_codes"].numpy(), code_bits, count)
    return _shared_values(tensors[f"{name}.codebook"], codes, name).view(rows, groups, pattern.n)


def load_sparse(
    path: str | Path, into: nn.Module | None = None
) -> tuple[nn.Module, ModelConfig | None]:
    """The model saved by ``save_sparse`` (float32 parameters) and its config: rebuilt
    from the config, or loaded ``into`` the given instance (any model; config None
    unless one was saved)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
        tensors = load(blob)
        metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    except (OSError, SafetensorError, ValueError, KeyError) as err:
        raise ExportError(f"{path}: not a readable safetensors file ({err})") from err
    if metadata.get("format") != FORMAT:
        raise ExportError(f"{path}: not a prunelab sparse export")
    if _digest(tensors) != metadata["sha256"]:
        raise ExportError(f"{path}: contents do not match their checksum; the file was altered")
    saved = json.loads(metadata["model"])
    config = from_dict(ModelConfig, saved) if saved is not None else None
    if into is None and config is None:
        raise ExportError(f"{path}: saved without a model config; pass into=<the model>")
    model = into if into is not None else build_model(config)
    state = {}
    try:
        coded = json.loads(metadata.get("coded", "{}"))
        for name, shape in json.loads(metadata["sparse"]).items():
            state[name] = _load_weight(tensors, name, shape, metadata, coded.get(name))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ExportError(f"{path}: its sparse weights cannot be read ({err})") from err
    try:
        for name, (shape, n, m) in json.loads(metadata.get("nm", "{}")).items():
            pattern = NM.parse(f"{n}:{m}")
            values = _nm_values(tensors, name, shape, pattern, metadata)
            state[name] = nm_format.decode(values, tensors[f"{name}.nm_places"], shape, pattern)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ExportError(f"{path}: its N:M weights cannot be read ({err})") from err
    stored = (".values", ".gaps", ".counts", ".codebook", ".codes", ".huffman", ".nm_values",
              ".nm_places", ".nm_codes")  # fmt: skip
    for name, tensor in tensors.items():
        if not name.endswith(stored):
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ExportError(f"{path} does not fit {type(model).__name__}: {err}") from err
    return model, config


def dense_bytes(model: nn.Module) -> int:
    """Size of the model's (float32) state dict as safetensors."""
    return len(state_dict_bytes(model))


def compacted_config(config: ModelConfig, compacted: nn.Module) -> ModelConfig:
    """The built-in model configuration whose sizes are those of ``compacted``."""
    if is_factory(config.name):
        raise CompactionError(
            f"{config.name} is your own function, which builds its own widths: a compacted "
            "copy cannot be rebuilt from a config; export it as sparse or onnx"
        )
    weighted = [m for m in compacted.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return replace(config, hidden=tuple(m.weight.shape[0] for m in weighted[:-1]))


@dataclass(frozen=True)
class Exported:
    path: Path
    bytes: int
    params: int
    test_metric: float
    metric: str = "accuracy"  # the task's, of prunelab.tasks.METRICS


def _finished_cell(paths: RunPaths, config: StudyConfig, method: str, k: float) -> Path:
    """The stored model of a finished cell of the study, or a ValueError saying why not."""
    wanted = PruneMethod.parse(method)
    names = [PruneMethod.parse(m).name for m in config.methods]
    if wanted.name not in names:
        raise ValueError(f"method {wanted.name!r} is not in this run; it has {', '.join(names)}")
    stored_k = [x for x in config.ks if abs(x - k) < 1e-9]
    if not stored_k:  # every digit, so that a k just off the run's shows how it differs
        raise ValueError(f"k={float(k)!r} is not in this run; it has "
                         f"{', '.join(repr(float(x)) for x in config.ks)}")  # fmt: skip
    model_path = paths.cell_model(config.cell_id(wanted, stored_k[0]))
    if not model_path.exists():
        raise ValueError(f"{wanted.name} at k={k:g} has not finished; rerun the study to finish it")
    return model_path


def _of_seed(config: StudyConfig, seed: int | None) -> StudyConfig:
    """The configuration of one seed of the study (its first by default)."""
    seeds = config.per_seed()
    chosen = [c for c in seeds if seed is None or c.seed == seed]
    if not chosen:
        raise ValueError(f"seed {seed} is not in this run; it has seeds "
                         f"{', '.join(str(c.seed) for c in seeds)}")  # fmt: skip
    return chosen[0]


# A centroid's gradient sums those of all its weights, thousands in a large layer: an
# optimizer with fixed steps (SGD) would step that many times too far; Adam scales them.
CODEBOOK_LR = 1e-4


def _check_options(
    form: str,
    codebook_bits: int | None,
    codebook_epochs: int,
    entropy: str | None,
    codebook_lr: float | None,
) -> None:
    check_choice("format", form, EXPORT_FORMS)
    if (codebook_bits is not None or entropy is not None) and form != "sparse":
        raise ValueError("a codebook or entropy coding applies to the sparse format only")
    if codebook_epochs < 0 or (codebook_epochs and codebook_bits is None):
        raise ValueError(f"training the codebook ({codebook_epochs} epochs) needs a codebook "
                         "(its bits) and epochs >= 0")  # fmt: skip
    if codebook_lr is not None and not codebook_epochs:
        raise ValueError("a codebook learning rate applies to its training: give its epochs too")


def export_cell(
    run_dir: str | Path,
    method: str,
    k: float,
    form: str,
    out: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    codebook_bits: int | None = None,
    codebook_epochs: int = 0,
    codebook_lr: float | None = None,
    entropy: str | None = None,
    data_dir: Path | None = None,
    seed: int | None = None,
) -> Exported:
    """Export the fine-tuned model of one (method, k) of a finished study.

    ``form`` "sparse" keeps only non-zero weights; "compact" removes pruned units
    and stores a smaller dense model; "onnx" writes the compacted model as ONNX
    (run by onnxruntime; at float16 ``dtype`` its weights are stored as float16 and
    computed in float32). The file is reloaded and evaluated on the test set, so
    the metric reported is that of what was written. ``codebook_bits`` shares
    the sparse form's values through a per-layer k-means codebook, whose centroids
    are first trained for ``codebook_epochs`` epochs (``quantize.train_codebooks``,
    on the study's data, with Adam at ``codebook_lr``, default ``CODEBOOK_LR``);
    ``entropy`` codes its gaps
    and codes (one of ``ENTROPY_CODERS``). ``seed`` picks one of a study's seeds
    (default: its first).
    """
    _check_options(form, codebook_bits, codebook_epochs, entropy, codebook_lr)
    paths, config = open_run(run_dir)
    config = _of_seed(config, seed)
    model, model_config = load_sparse(_finished_cell(paths, config, method, k))
    data = load_study_data(config, RunOptions(data_dir=data_dir), torch.device("cpu"))
    chain = is_chain(model)
    if form == "compact" and not chain:
        raise ValueError(
            f"{model_config.name} is compacted to channel counts that its config cannot "
            "describe; export it as sparse (loaded into the model) or as onnx"
        )
    if form == "sparse":
        if codebook_epochs:
            lr = CODEBOOK_LR if codebook_lr is None else codebook_lr
            tuning = replace(config.finetune, optimizer="adam", lr=lr, momentum=0.0,
                             nesterov=False, weight_decay=0.0, epochs=codebook_epochs)  # fmt: skip
            train_codebooks(model, codebook_bits, data.train, data.val, tuning,
                            seed=config.seed, task=data.task)  # fmt: skip
        size = save_sparse(model, model_config, out, dtype, codebook_bits=codebook_bits,
                           pattern=PruneMethod.parse(method).pattern, entropy=entropy)  # fmt: skip
        written, _ = load_sparse(out)
        runner = written
    elif form == "compact":
        small = compact(model)
        size = save_sparse(small, compacted_config(model_config, small), out, dtype, sparse=False)
        written, _ = load_sparse(out)
        runner = written
    else:
        written = compact(model, data.test.head(2))
        size = save_onnx(written, out, data.test.head(1), dtype)
        runner = OnnxModel(out)
    metric = evaluate(runner, data.test, task=data.task).metric
    return Exported(Path(out), size, nonzero_parameters(written), metric, config.metric.name)


EXPORT_FORMS = ("sparse", "compact", "onnx")
