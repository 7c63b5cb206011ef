"""What unit pruning buys on networks that are not chains: parameters, FLOPs and
latency of the compacted ResNet-20, MobileNetV2, ViT and (where ``transformers`` is
installed) Hugging Face BERT and GPT-2 against the dense network, timed in the same
process (k = fraction of each coupled group's units removed, by magnitude: channels,
MLP units, attention heads).

    python benchmarks/structured.py [--device cuda]
"""

from __future__ import annotations

import argparse
import importlib.util

import torch
from torch import nn

import prunelab
from prunelab.compact import parameter_count
from prunelab.metrics import flops, latency_ms
from prunelab.models import ModelConfig, build_model
from prunelab.train import fast_cpu_math

SETTLE = 0.5  # seconds of timing per measurement: shorter ones varied twofold here


def hugging_face(kind: str) -> nn.Module:
    """BERT and GPT-2 of 4 layers, width 128, 4 heads, from configs (random weights)."""
    import transformers

    transformers.logging.set_verbosity_error()
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, intermediate_size=512)  # fmt: skip
        return transformers.BertForSequenceClassification(config)
    config = transformers.GPT2Config(vocab_size=1000, n_embd=128, n_layer=4, n_head=4,
                                     pad_token_id=0)  # fmt: skip
    return transformers.GPT2ForSequenceClassification(config)


def cases() -> dict[str, tuple[callable, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1, 28, 28, generator=generator)
    tokens = torch.randint(1, 1000, (2, 32), generator=generator)
    found = {name: (lambda n=name: build_model(ModelConfig(n), seed=0), images)
             for name in ("resnet20", "mobilenetv2", "vit")}  # fmt: skip
    if importlib.util.find_spec("transformers") is not None:
        for kind in ("bert", "gpt2"):
            found[f"{kind} (32 tokens)"] = (lambda k=kind: hugging_face(k), tokens)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    device = torch.device(parser.parse_args().device)
    fast_cpu_math()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{torch.get_num_threads()} threads"  # fmt: skip
    print(f"torch {torch.__version__}, {where}\n")
    print("| model | k | params | FLOPs | latency b1 | latency b256 | speed-up b256 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (build, x) in cases().items():
        torch.manual_seed(0)
        dense, x = build().eval().to(device), x.to(device)
        base_b1, base_b256 = latency_ms(dense, x, 1, SETTLE), latency_ms(dense, x, 256, SETTLE)
        print(f"| {name} | 0 | {parameter_count(dense):,} | {flops(dense, x[:1]) / 1e6:.1f} M | "
              f"{base_b1:.2f} ms | {base_b256:.1f} ms | 1.00x |")  # fmt: skip
        for k in (0.5, 0.75):
            torch.manual_seed(0)
            model = build().eval().to(device)
            prunelab.prune(model, "unit", k, example_inputs=x)
            small = prunelab.compact(model, example_inputs=x)
            b1, b256 = latency_ms(small, x, 1, SETTLE), latency_ms(small, x, 256, SETTLE)
            print(f"| {name} | {k:g} | {parameter_count(small):,} | "
                  f"{flops(small, x[:1]) / 1e6:.1f} M | {b1:.2f} ms | {b256:.1f} ms | "
                  f"{base_b256 / b256:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
