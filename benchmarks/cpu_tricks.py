"""The three measurements behind prunelab's CPU training speed, each against its
alternative in the same process:

* Adam's step on a 1000x1000 weight whose rows are 90% zero-gradient, unfused vs fused;
* holding the seed MLP's masks after a step: ``masked_fill_`` with bool masks vs a
  multiply by float masks;
* training epochs of the seed MLP on MNIST with denormals kept vs flushed to zero
  (run as two processes, since the setting must precede torch's first parallel work).

    python benchmarks/cpu_tricks.py
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from prunelab.models import ModelConfig, build_model, prunable_layers

EPOCHS_SCRIPT = """
import sys
from prunelab.train import fast_cpu_math, TrainConfig, train
if sys.argv[1] == "flush":
    fast_cpu_math()
from prunelab.data import load_dataset
from prunelab.models import ModelConfig, build_model
data = load_dataset("mnist")
records = train(build_model(ModelConfig(), seed=0), data.train, data.val, TrainConfig(), seed=0)
print(" ".join(f"{r.seconds:.1f}" for r in records))
"""


def per_call_ms(fn, repeats: int = 100) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeats


def adam_step_ms(fused: bool) -> float:
    param = torch.randn(1000, 1000, requires_grad=True)
    optimizer = torch.optim.Adam([param], lr=1e-3, fused=fused)
    grad = torch.randn(1000, 1000)
    grad[:900] = 0  # rows of pruned units get no gradient

    def step():
        param.grad = grad
        optimizer.step()

    return per_call_ms(step)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| measurement | slower way | prunelab's way |")
    print("|---|---:|---:|")
    print(f"| Adam step, 1000x1000 (ms) | {adam_step_ms(False):.2f} unfused "
          f"| {adam_step_ms(True):.2f} fused |")  # fmt: skip
    weights = [
        layer.weight.detach() for layer in prunable_layers(build_model(ModelConfig())).values()
    ]
    pruned = [torch.rand_like(w) < 0.9 for w in weights]
    kept = [(~p).float() for p in pruned]
    fill = per_call_ms(
        lambda: [w.masked_fill_(p, 0.0) for w, p in zip(weights, pruned, strict=True)]
    )
    mul = per_call_ms(lambda: [w.mul_(m) for w, m in zip(weights, kept, strict=True)])
    print(f"| hold the seed MLP's masks (ms) | {fill:.2f} masked_fill_ | {mul:.2f} multiply |")
    epochs = {}
    for mode in ("keep", "flush"):
        run = subprocess.run([sys.executable, "-c", EPOCHS_SCRIPT, mode], capture_output=True,
                             text=True, check=True)  # fmt: skip
        epochs[mode] = run.stdout.strip()
    print(f"| seconds per epoch, 5 epochs | {epochs['keep']} denormals kept "
          f"| {epochs['flush']} flushed |")  # fmt: skip


if __name__ == "__main__":
    main()
