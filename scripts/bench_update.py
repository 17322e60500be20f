"""Updates per second of one Cal-QL gradient step, measured side by side in one run: o2o in each precision
against d3rlpy's CalQL at the same configuration, interleaved round by round so the machine's load falls on
all alike, with the fraction of the machine's matmul ceiling each reaches.

    python scripts/bench_update.py                        # door sizes: twin 3x256 critics, batch 256, 10 actions
    python scripts/bench_update.py --against-d3rlpy       # + d3rlpy, installed into .bench/d3rlpy-venv on first use
    python scripts/bench_update.py --threads 1 2 --precision fp32   # the thread table of docs/speed.md
    python scripts/bench_update.py --modes eager compiled  # compile=true against eager (+ cudagraphs on a GPU)
    python scripts/bench_update.py --profile --modes eager compiled  # where the time goes: matmuls, the rest
    python scripts/bench_update.py --algos calql awac td3bc rebrac --precision fp32  # other methods, same sizes
    python scripts/bench_update.py --image 64 --precision fp32   # + the same update on 64x64 RGB frames (encoder=)

Synthetic data; the update only (both sides sample preallocated tensors). d3rlpy pins its own gymnasium, so it
lives in its own environment and is driven through ``scripts/bench_d3rlpy_worker.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from o2o.agents.registry import agent_class
from o2o.buffers import TransitionBuffer
from o2o.cli import compose_config
from o2o.config import validate

ROOT = Path(__file__).resolve().parents[1]
D3RLPY_VENV = ROOT / ".bench" / "d3rlpy-venv"


IMAGE_TRANSITIONS = 10_000  # random frames sampled by the image variant (memory for 100k: printed, not allocated)


class Ours:
    def __init__(self, args, precision: str, mode: str = "eager", algo: str = "calql", image: int = 0):
        """``image``: observations are (image, image, 3) uint8 frames behind the configured encoder."""
        torch.manual_seed(0)
        self.device = torch.device(args.device)
        composed = validate(compose_config([f"algo={algo}", f"algo.actor_hidden=[{args.hidden},{args.hidden}]",
                                            f"algo.critic_hidden=[{','.join([str(args.hidden)] * args.layers)}]",
                                            f"encoder={args.encoder}"]))
        self.cfg = composed.algo
        if hasattr(self.cfg, "n_actions"):  # CQL's sampled actions, and its max backup's (the authors' use one count)
            self.cfg.n_actions = self.cfg.backup_actions = args.n_actions
        observation, obs_dim = args.obs_dim, args.obs_dim
        if image:
            from o2o.agents.encoders import PixelObservation

            observation = PixelObservation((image, image, 3), composed.encoder)
            obs_dim = observation.flat_dim
        self.agent = agent_class(self.cfg)(observation, args.act_dim, self.cfg, self.device, precision,
                                           total_updates=10**6)
        self.agent.begin_phase("offline")
        if mode != "eager":
            self.agent.compile_update(cuda_graphs=mode == "cudagraphs")
        n = IMAGE_TRANSITIONS if image else 100_000
        rng = np.random.default_rng(0)
        self.buffer = TransitionBuffer(n, obs_dim, args.act_dim, self.device, self.cfg.reads_next_actions,
                                       (image, image, 3) if image else None)
        if image:
            obs = rng.integers(0, 256, (n, obs_dim), dtype=np.uint8)
            next_obs = np.roll(obs, 1, axis=0)
        else:
            obs, next_obs = rng.normal(size=(n, obs_dim)), rng.normal(size=(n, obs_dim))
        self.buffer.add(obs, rng.uniform(-1, 1, (n, args.act_dim)), rng.normal(size=n), next_obs, rng.random(n) < 0.01,
                        rng.normal(size=n), rng.uniform(-1, 1, (n, args.act_dim)) if self.cfg.reads_next_actions else None)
        self.batch_size = args.batch_size

    def seconds(self, steps: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            metrics = self.agent.update(self.buffer.sample(self.batch_size))
        metrics["critic_loss"].item()  # one sync at the end: o2o keeps metrics on the device
        return time.perf_counter() - start

    def flops(self) -> int:
        """Floating-point operations of one update (torch's counter: matmuls, the bulk of the work), the mean over a
        block of updates where the actor steps once per block."""
        from torch.utils.flop_counter import FlopCounterMode

        updates = self.cfg.actor_update_interval  # a delayed actor steps once in so many updates: their mean
        with FlopCounterMode(display=False) as counter:
            for _ in range(updates):
                self.agent.update(self.buffer.sample(self.batch_size))
        return counter.get_total_flops() // updates


class D3rlpy:
    def __init__(self, args, threads: int):
        python = ensure_d3rlpy_venv()
        self.proc = subprocess.Popen([str(python), str(ROOT / "scripts" / "bench_d3rlpy_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps({
            "threads": threads, "batch_size": args.batch_size, "n_actions": args.n_actions, "cql_weight": 5.0,
            "obs_dim": args.obs_dim, "act_dim": args.act_dim, "actor_hidden": [args.hidden] * 2,
            "critic_hidden": [args.hidden] * args.layers}) + "\n")
        self.proc.stdin.flush()
        self.versions = json.loads(self.proc.stdout.readline())

    def seconds(self, steps: int) -> float:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def ensure_d3rlpy_venv() -> Path:
    python = D3RLPY_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing d3rlpy into {D3RLPY_VENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(D3RLPY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}",
                        "d3rlpy"], check=True)
    return python


def matmul_ceiling(dtype: torch.dtype, device: torch.device, n: int = 1024, reps: int = 20) -> float:
    """FLOP/s of a large square matmul at the current thread count: what this machine's cores can reach."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    c.sum().item()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_weight_int8pack_mm")


def profile(variant: Ours, name: str, steps: int) -> None:
    """The share of one variant's CPU time in matrix multiplies; the rest is elementwise and reduction work,
    memory-bound at these sizes, which is what compiling fuses."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    variant.seconds(3)  # compiled and warm
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        variant.seconds(steps)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS or "mkldnn" in e.key or "onednn" in e.key)
    kernels = sum(e.self_cpu_time_total for e in prof.key_averages() if "CompiledFxGraph" in e.key)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
    print(f"{name}: {steps} updates, aten ops {total / 1e6:.2f} s ({matmul / max(total, 1):.0%} matmul), "
          f"inductor-generated kernels {kernels / 1e6:.2f} s; top aten ops: "
          + ", ".join(f"{e.key[6:]} {e.self_cpu_time_total / max(total, 1):.0%}" for e in top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-dim", type=int, default=39)
    parser.add_argument("--act-dim", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3, help="critic hidden layers (the actor has 2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-actions", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="updates per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurements per variant (median kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled", "cudagraphs"],
                        help="compiled: compile=true (o2o.agents.compiled); cudagraphs: with CUDA graphs (GPU)")
    parser.add_argument("--algos", nargs="+", default=["calql"],
                        help="algorithm options (conf/algo) measured side by side at the same sizes")
    parser.add_argument("--image", type=int, default=0, metavar="SIZE",
                        help="also each o2o variant on SIZE x SIZE RGB frames behind the encoder (--encoder)")
    parser.add_argument("--encoder", default="impala_small", help="conf/encoder option of the image variants")
    parser.add_argument("--against-d3rlpy", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where each o2o variant's time goes (matmuls against the rest), torch.profiler")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device={device}; obs={args.obs_dim} act={args.act_dim} critic=2x{args.layers}x{args.hidden} "
          f"batch={args.batch_size} n_actions={args.n_actions}")
    if args.profile:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for mode in args.modes:
                for precision in args.precision:
                    profile(Ours(args, precision, mode), f"threads={threads} o2o {precision} {mode}", args.steps)
        return
    for threads in args.threads:
        torch.set_num_threads(threads)
        sizes = [0, args.image] if args.image else [0]  # the state update, and beside it the image update
        variants = {f"o2o {a} {p}" + (f" {m}" if m != "eager" else "") + (f" {size}px" if size else ""):
                    Ours(args, p, m, a, size)
                    for a in args.algos for m in args.modes for p in args.precision for size in sizes}
        baseline = None
        if args.against_d3rlpy and device.type == "cpu":
            baseline = D3rlpy(args, threads)
            variants["d3rlpy fp32"] = baseline
            print(f"d3rlpy {baseline.versions['d3rlpy']} (torch {baseline.versions['torch']})")
        for name, variant in variants.items():  # warm-up (and compilation), also of the d3rlpy worker
            start = time.perf_counter()
            variant.seconds(3)
            print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, variant in variants.items():
                times[name].append(variant.seconds(args.steps))
        ceiling = {p: matmul_ceiling(torch.bfloat16 if p == "bf16" else torch.float32, device)
                   for p in ("fp32", "bf16")}
        flops = {a: Ours(args, "fp32", algo=a).flops() for a in args.algos}
        if args.image:
            flops.update({f"{a}px": Ours(args, "fp32", algo=a, image=args.image).flops() for a in args.algos})
        print(f"threads={threads}: matmul ceiling fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
              f"{ceiling['bf16'] / 1e9:.0f} GFLOP/s; one update = "
              + ", ".join(f"{flops[a] / 1e9:.3f} GFLOP ({a})" for a in args.algos))
        ups = {name: args.steps / statistics.median(t) for name, t in times.items()}
        for name, rate in ups.items():
            precision = "bf16" if "bf16" in name else "fp32"
            algo = name.split()[1] + ("px" if name.endswith("px") else "")
            work = flops[algo] if name.startswith("o2o ") else Ours(args, "fp32").flops()  # d3rlpy: Cal-QL
            line = f"  {name:28s} {rate:8.2f} updates/s  {rate * work / ceiling[precision]:6.1%} of the {precision} ceiling"
            if baseline is not None:
                line += f"  {rate / ups['d3rlpy fp32']:5.2f}x d3rlpy fp32"
            print(line, flush=True)
        if baseline is not None:
            baseline.close()
    if args.image:
        from o2o.buffers import transition_bytes

        per = transition_bytes(args.image * args.image * 3, args.act_dim, frames=True)
        print(f"buffer memory: {per} bytes per {args.image}x{args.image} transition (its frame and next frame, uint8), "
              f"{per * 100_000 / 2**30:.2f} GiB for 100k transitions; a state transition: "
              f"{transition_bytes(args.obs_dim, args.act_dim)} bytes")


if __name__ == "__main__":
    main()
