"""Training-step micro-benchmarks behind the CPU choices: channels-last, bf16, and the head's dropout mask.

    python benchmarks/step_speed.py --rounds 3

EfficientNet-Lite0 at 128 px with the default recipe's trained part (the last two stages and conv head,
frozen BatchNorm), batch 32, 2 cores; each variant alternated with the others for R rounds, medians:
- a whole-network fine-tune step (forward, backward, AdamW), contiguous against channels-last tensors;
- forward + backward of the tail alone on cached 112x8x8 trunk outputs: contiguous, channels-last, and
  channels-last under bf16 autocast;
- one dropout mask for a 256 x 1,280 batch: nn.Dropout's Bernoulli sampling against imgtune's bytes.
Then the work split of a fine-tune step, counted from the convolution and linear shapes: the frozen
trunk's forward pass against the trained tail's forward and backward (weight gradients everywhere, input
gradients except into the first trained layer), for the default recipe's trained part and for the last
stage alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from imgtune.model.backbones import create_backbone
from imgtune.model.heads import Classifier, Dropout
from imgtune.model.trunk import Tail
from imgtune.train.loop import set_train_mode

TRAINED = ("blocks.5.", "blocks.6.", "conv_head.", "bn2.")


def model(tail: bool, channels_last: bool):
    m = create_backbone(image_size=128).model
    for n, p in m.named_parameters():
        p.requires_grad = n.startswith(TRAINED)
    net = Classifier(Tail(m, 5) if tail else m, torch.nn.Sequential(Dropout(0.2), torch.nn.Linear(1280, 10)))
    x = torch.randn(32, 112, 8, 8) if tail else torch.randn(32, 3, 128, 128)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    set_train_mode(net, bn_train=False)
    return net, x


def step_ms(tail: bool, channels_last: bool, bf16: bool = False, optimizer: bool = True, n: int = 5) -> float:
    net, x = model(tail, channels_last)
    y = torch.zeros(len(x), dtype=torch.long)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer:
            opt.step()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(n):
        step()
    return 1000 * (time.perf_counter() - started) / n


def mask_ms(bytes_mask: bool, n: int = 300) -> float:
    x = torch.randn(256, 1280)
    drop = Dropout(0.2).train() if bytes_mask else torch.nn.Dropout(0.2).train()
    started = time.perf_counter()
    for _ in range(n):
        drop(x)
    return 1000 * (time.perf_counter() - started) / n


def work_split(trained: tuple[str, ...] = TRAINED) -> tuple[float, float]:
    """(trunk forward, tail forward + backward) GFLOP for one batch of 32 at 128 px, the tail being the
    layers named with the `trained` prefixes."""
    m = create_backbone(image_size=128).model
    flops: list[tuple[str, float]] = []

    def count(module, args, out, name):
        per_output = module.in_features if isinstance(module, torch.nn.Linear) else \
            module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        flops.append((name, 2 * out.numel() * per_output))

    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.register_forward_hook(lambda mod, a, o, name=name: count(mod, a, o, name))
    with torch.inference_mode():
        m(torch.zeros(32, 3, 128, 128))
    in_tail = [f"{n}.".startswith(trained) for n, _ in flops]
    trunk = sum(f for (n, f), t in zip(flops, in_tail) if not t and n != "classifier")
    tail = [f for (_, f), t in zip(flops, in_tail) if t]
    backward = sum(2 * f for f in tail) - tail[0]  # no input gradient into the first trained layer
    return trunk / 1e9, (sum(tail) + backward) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as training does (devices.cpu_numerics)
    cases = {
        "whole network, step, contiguous": lambda: step_ms(False, False),
        "whole network, step, channels-last": lambda: step_ms(False, True),
        "tail, forward + backward, contiguous": lambda: step_ms(True, False, optimizer=False, n=10),
        "tail, forward + backward, channels-last": lambda: step_ms(True, True, optimizer=False, n=10),
        "tail, forward + backward, channels-last + bf16": lambda: step_ms(True, True, bf16=True, optimizer=False, n=10),
        "dropout mask 256x1280, nn.Dropout (Bernoulli)": lambda: mask_ms(False),
        "dropout mask 256x1280, imgtune (random bytes)": lambda: mask_ms(True),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            times[name].append(run())
    print(f"batch 32 at 128 px, {torch.get_num_threads()} threads, medians of {args.rounds} alternating rounds")
    print("| measurement | ms | rounds |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    for name, trained in (("the default recipe's last two stages + conv head", TRAINED),
                          ("the last stage + conv head", ("blocks.6.", "conv_head.", "bn2."))):
        trunk, tail = work_split(trained)
        print(f"\nwork per batch, training {name}: frozen trunk forward {trunk:.2f} GFLOP; trained tail forward "
              f"+ backward {tail:.2f} GFLOP = {tail / (trunk + tail):.2f} of a whole-network step")


if __name__ == "__main__":
    main()
