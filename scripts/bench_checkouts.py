"""Updates per second of two checkouts of this project side by side, to show that a refactor costs no speed.

    git worktree add ../before <commit>
    python scripts/bench_checkouts.py ../before . --algos calql rlpd --modes eager compiled

One worker process per checkout (its ``src/`` and ``conf/`` first on the path, one thread each) builds every
(algorithm, mode) agent at the algorithm's default sizes on synthetic data and compiles it once; then rounds of
``--steps`` updates alternate between the checkouts, so the machine's load falls on both alike, and the median of
``--rounds`` is kept. Uses only ``o2o.cli.compose_config``, ``o2o.config.validate`` and ``o2o.pipeline.make_agent``,
which older checkouts have too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r'''
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from o2o.cli import compose_config
from o2o.config import validate
from o2o.buffers import TransitionBuffer
from o2o.pipeline import make_agent
spec = json.loads(sys.stdin.readline())
obs_dim, act_dim, batch = spec["obs_dim"], spec["act_dim"], spec["batch_size"]
rng = np.random.default_rng(0)
n = 50_000
buffer = TransitionBuffer(n, obs_dim, act_dim, torch.device("cpu"))
buffer.add(rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, act_dim)), rng.normal(size=n),
           rng.normal(size=(n, obs_dim)), rng.random(n) < 0.01, rng.normal(size=n))
agents = {}
for algo in spec["algos"]:
    cfg = validate(compose_config([f"algo={algo}", "precision=fp32"]))
    for mode in spec["modes"]:
        torch.manual_seed(0)
        agent = make_agent(cfg, obs_dim, act_dim, torch.device("cpu"), "fp32", mode == "compiled")
        agent.begin_phase("offline")
        for _ in range(3 * cfg.algo.actor_update_interval):  # compiles every variant, warms the caches
            agent.update(buffer.sample(batch))
        agents[f"{algo}/{mode}"] = agent
print(json.dumps(sorted(agents)), flush=True)
for line in sys.stdin:
    name, steps = line.split()
    agent = agents[name]
    start = time.perf_counter()
    for _ in range(int(steps)):
        metrics = agent.update(buffer.sample(batch))
    next(iter(metrics.values())).item()
    print(time.perf_counter() - start, flush=True)
'''


def start(checkout: Path, spec: dict, workdir: str) -> subprocess.Popen:
    link = Path(workdir) / checkout.name / "o2o_conf"  # the checkout's conf/ under the package name it installs as
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(checkout / "conf")
    env = {**os.environ, "PYTHONPATH": f"{link.parent}{os.pathsep}{checkout / 'src'}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=checkout)
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--algos", nargs="+", default=["calql", "rlpd"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--obs-dim", type=int, default=39)  # Adroit door
    parser.add_argument("--act-dim", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    spec = {"algos": args.algos, "modes": args.modes, "obs_dim": args.obs_dim, "act_dim": args.act_dim,
            "batch_size": args.batch_size}
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    with tempfile.TemporaryDirectory() as workdir:
        workers = {}
        for label, checkout in checkouts.items():  # one after the other: compiling takes both cores
            workers[label] = start(checkout, spec, workdir)
            names = json.loads(workers[label].stdout.readline())
        times = {(label, name): [] for label in workers for name in names}
        for _ in range(args.rounds):
            for name in names:
                for label, proc in workers.items():
                    proc.stdin.write(f"{name} {args.steps}\n")
                    proc.stdin.flush()
                    times[label, name].append(float(proc.stdout.readline()))
        for proc in workers.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread per worker; "
          f"obs {args.obs_dim}, act {args.act_dim}, batch {args.batch_size}; median of {args.rounds} rounds of "
          f"{args.steps} updates, fp32")
    print("| algorithm / mode | before (updates/s) | after (updates/s) | after / before |\n|---|---|---|---|")
    for name in names:
        rate = {label: args.steps / statistics.median(times[label, name]) for label in workers}
        print(f"| {name} | {rate['before']:.1f} | {rate['after']:.1f} | {rate['after'] / rate['before']:.3f} |")


if __name__ == "__main__":
    main()
