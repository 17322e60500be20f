"""A task of one's own, end to end: a Gymnasium env and the offline dataset it comes with.

``PointReach-v0``: a point in the square [-1, 1]^2 starts near (-0.7, -0.7) and must reach the goal (0.7, 0.7); an
action in [-1, 1]^2 moves it by a tenth of itself. Reward 1 on reaching the goal (within 0.1), which ends the
episode, 0 otherwise; ``info["success"]`` says whether it was reached; 60 steps at most.

    python point_reach.py point_reach.hdf5     # writes the dataset (D4RL's HDF5 layout) beside it

The dataset: 200 episodes of a noisy scripted controller (step toward the goal, Gaussian noise of std 0.6 on each
action), with the D4RL reference scores measured here: a uniform random policy's mean return (``ref_min_score``)
and the noise-free controller's (``ref_max_score``).
"""
from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np

GOAL = np.array([0.7, 0.7], dtype=np.float32)
START = np.array([-0.7, -0.7], dtype=np.float32)
RADIUS, STEP, HORIZON = 0.1, 0.1, 60


class PointReach(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.position = START.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = (START + self.np_random.uniform(-0.1, 0.1, size=2)).astype(np.float32)
        return self.position.copy(), {"success": False}

    def step(self, action):
        move = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0) * STEP
        self.position = np.clip(self.position + move, -1.0, 1.0).astype(np.float32)
        success = bool(np.linalg.norm(self.position - GOAL) < RADIUS)
        return self.position.copy(), float(success), success, False, {"success": success}


gym.register(id="PointReach-v0", entry_point=f"{__name__}:PointReach", max_episode_steps=HORIZON)


def controller(position: np.ndarray) -> np.ndarray:
    return np.clip((GOAL - position) * 5.0, -1.0, 1.0)


def rollouts(policy, episodes: int, seed: int) -> list[dict]:
    env = gym.make("PointReach-v0")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        steps = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                                 "success")}
        done = False
        while not done:
            action = policy(obs, rng).astype(np.float32)
            next_obs, reward, terminated, truncated, info = env.step(action)
            for key, value in zip(steps, (obs, action, reward, next_obs, terminated, truncated, info["success"])):
                steps[key].append(value)
            obs, done = next_obs, terminated or truncated
        out.append(steps)
    return out


def mean_return(episodes: list[dict]) -> float:
    return float(np.mean([sum(e["rewards"]) for e in episodes]))


def write_dataset(path: str, episodes: int = 200, noise: float = 0.6, seed: int = 0) -> None:
    import h5py

    data = rollouts(lambda o, rng: np.clip(controller(o) + rng.normal(0, noise, 2), -1, 1), episodes, seed)
    random = rollouts(lambda o, rng: rng.uniform(-1, 1, 2), 100, seed + 10_000)
    expert = rollouts(lambda o, rng: controller(o), 100, seed + 20_000)
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "next_observations"):
            f[key] = np.concatenate([np.asarray(e[key], dtype=np.float32) for e in data])
        f["rewards"] = np.concatenate([np.asarray(e["rewards"], dtype=np.float32) for e in data])
        for key in ("terminals", "timeouts"):
            f[key] = np.concatenate([np.asarray(e[key], dtype=bool) for e in data])
        f["infos/success"] = np.concatenate([np.asarray(e["success"], dtype=bool) for e in data])
        f.attrs["ref_min_score"], f.attrs["ref_max_score"] = mean_return(random), mean_return(expert)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python point_reach.py OUT.hdf5")
    write_dataset(sys.argv[1])
    print(f"wrote {sys.argv[1]}")
