"""GPU interferers for ``steadygen bench --interfere gpu|vram``, run as their own process:

    python -m steadygen.engine.burn gpu --seconds 30 [--device cuda:0] [--size 8192]
    python -m steadygen.engine.burn vram --seconds 30 --gib 4

``gpu`` loops a bf16 matrix multiply (another program computing on our GPU); ``vram`` holds
memory and stays idle (the GPU looks free but is not). Both end by themselves after
``--seconds``, so a crashed benchmark never leaves them running, and both print a heartbeat
(one JSON line at least every 0.5 s: the TFLOP/s reached, or the GiB held) that the bench
checks all through each interfered round (steadygen/bench/heartbeat.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

BEAT_EVERY_S = 0.5


def beat(**data: float | str) -> None:
    print(json.dumps(data), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="steadygen-burn")
    ap.add_argument("mode", choices=["gpu", "vram"])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--size", type=int, default=8192, help="matrix side for gpu mode")
    ap.add_argument("--gib", type=float, default=4.0, help="memory to hold in vram mode")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("burn: no CUDA GPU here", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    deadline = time.monotonic() + args.seconds
    if args.mode == "vram":
        held = torch.empty(int(args.gib * 2**30), dtype=torch.uint8, device=dev)
        held.fill_(1)
        while time.monotonic() < deadline:
            beat(kind="vram", gib_held=held.numel() / 2**30)
            time.sleep(BEAT_EVERY_S / 2)
        return 0
    a = torch.randn(args.size, args.size, device=dev, dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device=dev, dtype=torch.bfloat16)
    flop = 2 * args.size**3 * 10
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        for _ in range(10):
            a = (a @ b).clamp_(-1, 1)
        torch.cuda.synchronize(dev)
        beat(kind="gpu", tflops=flop / max(time.monotonic() - t0, 1e-9) / 1e12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
