"""Env steps per second with image observations against the same env's states, side by side in one run: what a
visual dataset costs to build and a visual run to act in, on this machine.

    python scripts/bench_render.py                 # 64x64 frames, 30 steps per env, 3 rounds (median)
    python scripts/bench_render.py --size 16 --steps 100

Envs: OGBench's cube-single (states, and its visual twin, rendered by MuJoCo; EGL, on a CPU Mesa's llvmpipe), and
Gymnasium-Robotics' PointMaze U-maze (states, and its rgb_array render at the same size). Random actions.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402


def envs(size: int) -> dict:
    import ogbench  # noqa: F401  registers its envs

    from o2o.envs import register_robotics

    register_robotics()
    return {
        "cube-single (states)": lambda: gym.make("cube-single-singletask-v0"),
        f"visual-cube-single ({size}x{size} frames)": lambda: gym.make("visual-cube-single-singletask-v0",
                                                                      width=size, height=size),
        "PointMaze U-maze (states)": lambda: gym.make("PointMaze_UMaze-v3"),
        f"PointMaze U-maze ({size}x{size} rgb_array)": lambda: gym.make("PointMaze_UMaze-v3", render_mode="rgb_array",
                                                                       width=size, height=size),
    }


def steps_per_second(env, steps: int, render: bool) -> float:
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if render:
            frame = env.render()
            assert frame is not None
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, MUJOCO_GL={os.environ['MUJOCO_GL']}")
    made = {name: make() for name, make in envs(args.size).items()}
    rates: dict[str, list[float]] = {name: [] for name in made}
    for _ in range(args.rounds):  # interleaved, so the machine's load falls on all alike
        for name, env in made.items():
            rates[name].append(steps_per_second(env, args.steps, render="rgb_array" in name))
    for name, values in rates.items():
        print(f"  {name:40s} {statistics.median(values):9.1f} steps/s")
    frame = made[f"visual-cube-single ({args.size}x{args.size} frames)"].reset(seed=0)[0]
    print(f"a frame: {frame.shape} {frame.dtype}, {np.asarray(frame).nbytes} bytes")


if __name__ == "__main__":
    main()
