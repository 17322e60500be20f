"""Updates per second of one CQL / Cal-QL gradient step, with synthetic data.

    python scripts/bench_update.py --obs-dim 39 --act-dim 28 --hidden 256 --layers 3 --precision fp32 bf16
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from o2o.agents.cql import CQL
from o2o.buffers import TransitionBuffer
from o2o.cli import compose_config
from o2o.config import validate


def bench(args, precision: str) -> float:
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = validate(compose_config(["algo=calql", f"algo.actor_hidden=[{args.hidden},{args.hidden}]",
                                   f"algo.critic_hidden=[{','.join([str(args.hidden)] * args.layers)}]",
                                   f"algo.n_actions={args.n_actions}"])).algo
    agent = CQL(args.obs_dim, args.act_dim, cfg, device, precision)
    agent.begin_phase("offline")
    n = 100_000
    rng = np.random.default_rng(0)
    buffer = TransitionBuffer(n, args.obs_dim, args.act_dim, device)
    buffer.add(rng.normal(size=(n, args.obs_dim)), rng.uniform(-1, 1, (n, args.act_dim)), rng.normal(size=n),
               rng.normal(size=(n, args.obs_dim)), rng.random(n) < 0.01, rng.normal(size=n))
    for _ in range(args.warmup):
        agent.update(buffer.sample(args.batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        metrics = agent.update(buffer.sample(args.batch_size))
    metrics["critic_loss"].item()  # one sync at the end
    return args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-dim", type=int, default=39)
    parser.add_argument("--act-dim", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3, help="critic hidden layers (the actor has 2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-actions", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} obs={args.obs_dim} act={args.act_dim} "
          f"critic={args.layers}x{args.hidden} batch={args.batch_size} n_actions={args.n_actions}")
    for precision in args.precision:
        print(f"{precision}: {bench(args, precision):.2f} updates/s")


if __name__ == "__main__":
    main()
