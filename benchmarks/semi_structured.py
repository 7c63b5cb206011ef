"""2:4 sparse inference on a CUDA GPU against dense, both in float16 (or bfloat16).

Forward-pass latency of models pruned 2:4 and converted by
``prunelab.to_semi_structured``, against the same dense models.

Two shapes: the default study's MLP (784-1000-1000-500-200-10, its logits layer dense)
and a transformer's feed-forward block (4096 -> 16384 -> 4096), where the products are
large enough for sparse tensor cores to pay. Weights are untrained: latency does not
depend on their values. Each converted model's outputs are checked against the pruned
dense model's before it is timed.

    python benchmarks/semi_structured.py [--batches 1,16,256,4096] [--dtype float16]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from prunelab.metrics import latency_ms
from prunelab.models import ModelConfig, build_model
from prunelab.prune import prune
from prunelab.semi_structured import SemiStructuredLinear, backend, to_semi_structured


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Each model (pruned 2:4 by magnitude) with an example input of one sample."""
    mlp = build_model(ModelConfig())
    prune(mlp, "weight@2:4", 0.5, example_inputs=torch.rand(1, 1, 28, 28))
    block = nn.Sequential(nn.Linear(4096, 16384), nn.GELU(), nn.Linear(16384, 4096))
    prune(block, "weight@2:4", 0.5, include_last=True)
    return {"default MLP": (mlp, torch.rand(1, 1, 28, 28)),
            "feed-forward 4096-16384-4096": (block, torch.rand(1, 4096))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16,256,4096")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (2:4 sparse tensor cores, compute "
                         "capability 8.0 or newer); torch sees none")  # fmt: skip
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    kind = backend(torch.device("cuda"))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {kind.__name__}, "
          f"{args.dtype}")  # fmt: skip
    print("| model | 2:4 layers | batch | dense ms | 2:4 ms | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (model, example) in models().items():
        dense = model.to("cuda", dtype).eval()
        sparse = to_semi_structured(dense)
        example = example.to("cuda", dtype)
        converted = sum(isinstance(m, SemiStructuredLinear) for m in sparse.modules())
        check = example.expand(8, *example.shape[1:])
        with torch.inference_mode():
            torch.testing.assert_close(sparse(check), dense(check), atol=5e-2, rtol=5e-2)
        for batch in batches:
            base, fast = (latency_ms(m, example, batch, min_run_time=0.5) for m in (dense, sparse))
            print(f"| {name} | {converted} | {batch} | {base:.3f} | {fast:.3f} | "
                  f"{base / fast:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
