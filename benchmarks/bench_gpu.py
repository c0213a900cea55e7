"""Images/s of ResNet-18 on 32x32 synthetic batches: the runner's loop vs a hand-written
AMP + channels_last (+ torch.compile) loop, same process, interleaved.

Meant for a CUDA machine; on CPU it runs a few small batches so the script stays
exercised, and says the numbers are not GPU numbers.

    python benchmarks/bench_gpu.py [--batch 512] [--steps 50] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import interleaved, machine, median, per_epoch_split, write  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from runner.config.compose import compose_config  # noqa: E402
from runner.config.schema import run_spec  # noqa: E402
from runner.data.sets import TensorData  # noqa: E402
from runner.io.loggers import RunLogger  # noqa: E402
from runner.run.train import fit  # noqa: E402
from runner.train.builders import build_run  # noqa: E402
from runner.train.models import build_model  # noqa: E402


def synthetic(n: int, device: torch.device) -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorData(x.to(device), y.to(device), x[:256].to(device), y[:256].to(device), 10)


def hand_loop(cfg: Any, data: TensorData, device: torch.device, use_compile: bool) -> None:
    """The fast loop a GPU user writes: AMP, channels_last, optional compile, data on device."""
    torch.manual_seed(0)
    model = build_model(cfg.model, data.image_shape, 10).to(device)
    model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if use_compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    dtype = (
        torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    )
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    bs, n = cfg.data.batch_size, len(data.y_train)
    perm = torch.randperm(n, device=device)
    for i in range(0, n, bs):
        idx = perm[i : i + bs]
        x = data.x_train[idx].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype):
            loss = F.cross_entropy(net(x).float(), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    model.eval()  # and a validation pass, as the runner does every epoch
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        x = data.x_val.contiguous(memory_format=torch.channels_last)
        _ = (net(x).float().argmax(1) == data.y_val).float().mean().item()
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        args.batch, args.steps, args.repeats = 16, 2, 1
        print("no CUDA here: a small CPU run to exercise the script; these are not GPU numbers")
    n = args.batch * args.steps
    cfg = compose_config(
        [
            "model=resnet18",
            "data=fake",
            f"data.batch_size={args.batch}",
            "epochs=1",
            "scheduler=onecycle",
            "trainer.amp=true",
            f"trainer.compile={str(args.compile).lower()}",
            "trainer.log_every_n_steps=0",
            "trainer.progress=line",
            "logger=none",
        ]
    )
    data, longer = synthetic(n, device), synthetic(2 * n, device)
    with tempfile.TemporaryDirectory() as tmp:

        def runner(data: TensorData) -> None:
            run = build_run(run_spec(cfg), data)
            fit(run_spec(cfg), run, RunLogger(Path(tmp)), ckpt_dir=None)
            if cuda:
                torch.cuda.synchronize()

        variants = {
            "hand": lambda: hand_loop(cfg, data, device, args.compile),
            "runner": lambda: runner(data),
            # the same epoch with twice the batches: what the extra batches cost alone
            # separates a per-batch cost from the runner's fixed one (building the run)
            "hand, longer": lambda: hand_loop(cfg, longer, device, args.compile),
            "runner, longer": lambda: runner(longer),
        }
        for fn in variants.values():  # warm-up: cudnn autotune, compile
            fn()
        times = interleaved(variants, args.repeats)
    # both time a whole epoch: training batches plus one validation pass
    medians = {k: median(v) for k, v in times.items()}
    ips = {k: n / medians[k] for k in ("hand", "runner")}
    ratio = ips["runner"] / ips["hand"]
    split = per_epoch_split(medians, args.steps, 2)  # "epochs" here: batches
    per_batch = 1 / split["per-epoch ratio"]
    table = (
        "| loop | images/s |\n|---|---|\n"
        + "\n".join(f"| {k} | {v:,.0f} |" for k, v in ips.items())
        + f"\n\nrunner / hand = {ratio:.3f} (target ≥ 0.97); batch {args.batch}, "
        f"{args.steps} batches, compile={args.compile}, device {device}.\n"
        f"Over the extra {args.steps} batches of an epoch twice as long: runner / hand = "
        f"{per_batch:.3f} (images/s); the runner's fixed cost per run beyond the hand loop's: "
        f"{split['runner fixed s'] * 1000:.0f} ms."
    )
    payload = {"machine": machine(), "images_per_s": ips, "ratio": ratio,
               "per_batch_ratio": per_batch, "runner_fixed_s": split["runner fixed s"],
               "seconds": medians, "args": vars(args)}  # fmt: skip
    if cuda:
        write("gpu_compile" if args.compile else "gpu", payload, table)
    else:
        print(table)
    return payload


if __name__ == "__main__":
    main()
