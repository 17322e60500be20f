"""A task of one's own with image observations: point_reach.py's task, seen as 16x16 RGB frames.

``PixelReach-v0``: the same point, goal, actions, reward and episode rules as ``PointReach-v0``; the agent sees a
uint8 frame (16, 16, 3) with the point in red and the goal in green, nothing else. The env option
(conf/env/pixel_reach.yaml) puts an image encoder in front of the networks (encoder=impala_small).

    python pixel_reach.py pixel_reach.hdf5     # writes the dataset: point_reach's episodes, as frames

The dataset is D4RL's HDF5 layout with ``observations`` and ``next_observations`` stored as uint8 frames
(N, 16, 16, 3): the layout o2o reads for any image task of one's own.
"""
from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np

import point_reach

SIZE = 16


def frame(position: np.ndarray) -> np.ndarray:
    """The point (red) and the goal (green) on a black 16x16 frame."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for (x, y), channel in ((point_reach.GOAL, 1), (position, 0)):
        col = int(round((x + 1.0) / 2.0 * (SIZE - 1)))
        row = int(round((1.0 - y) / 2.0 * (SIZE - 1)))
        image[max(row - 1, 0): row + 1, max(col - 1, 0): col + 1, channel] = 255
    return image


class PixelReach(gym.ObservationWrapper):
    def __init__(self):
        super().__init__(point_reach.PointReach())
        self.observation_space = gym.spaces.Box(0, 255, shape=(SIZE, SIZE, 3), dtype=np.uint8)

    def observation(self, observation):
        return frame(observation)


gym.register(id="PixelReach-v0", entry_point=f"{__name__}:PixelReach", max_episode_steps=point_reach.HORIZON)


def write_dataset(path: str, episodes: int = 200, noise: float = 0.6, seed: int = 0) -> None:
    import h5py

    data = point_reach.rollouts(lambda o, rng: np.clip(point_reach.controller(o) + rng.normal(0, noise, 2), -1, 1),
                                episodes, seed)
    random = point_reach.rollouts(lambda o, rng: rng.uniform(-1, 1, 2), 100, seed + 10_000)
    expert = point_reach.rollouts(lambda o, rng: point_reach.controller(o), 100, seed + 20_000)
    with h5py.File(path, "w") as f:
        for key in ("observations", "next_observations"):
            f[key] = np.stack([frame(p) for e in data for p in e[key]])
        f["actions"] = np.concatenate([np.asarray(e["actions"], dtype=np.float32) for e in data])
        f["rewards"] = np.concatenate([np.asarray(e["rewards"], dtype=np.float32) for e in data])
        for key in ("terminals", "timeouts"):
            f[key] = np.concatenate([np.asarray(e[key], dtype=bool) for e in data])
        f["infos/success"] = np.concatenate([np.asarray(e["success"], dtype=bool) for e in data])
        f.attrs["ref_min_score"] = point_reach.mean_return(random)
        f.attrs["ref_max_score"] = point_reach.mean_return(expert)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python pixel_reach.py OUT.hdf5")
    write_dataset(sys.argv[1])
    print(f"wrote {sys.argv[1]}")
