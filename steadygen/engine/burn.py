"""GPU interferers for ``steadygen bench --interfere gpu|vram``, run as their own process:

    python -m steadygen.engine.burn gpu --seconds 30 [--device cuda:0] [--size 8192]
    python -m steadygen.engine.burn vram --seconds 30 --gib 4

``gpu`` loops a bf16 matrix multiply (another program computing on our GPU); ``vram`` holds
memory and stays idle (the GPU looks free but is not). Both end by themselves after
``--seconds``, so a crashed benchmark never leaves them running.
"""

from __future__ import annotations

import argparse
import sys
import time


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
            time.sleep(0.1)
        return 0
    a = torch.randn(args.size, args.size, device=dev, dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device=dev, dtype=torch.bfloat16)
    while time.monotonic() < deadline:
        for _ in range(10):
            a = (a @ b).clamp_(-1, 1)
        torch.cuda.synchronize(dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
