"""Minari's HDF5 file read directly, in one process or split over forked reading processes (o2o.data.minari)."""
from __future__ import annotations

import contextlib
import gc
import logging
import mmap
import multiprocessing
import sys

import numpy as np

from o2o.errors import DatasetError

log = logging.getLogger("o2o")

# Episodes per reading process at least: below this, starting a process costs more than it saves
MIN_EPISODES_PER_WORKER = 250


def forked_read_allowed() -> bool:
    """Forking is safe only before the process has started CUDA (a forked child cannot use the parent's CUDA
    context, and forking a process with CUDA threads running is undefined), and only where fork exists."""
    torch = sys.modules.get("torch")
    cuda_started = torch is not None and torch.cuda.is_initialized()
    return not cuda_started and "fork" in multiprocessing.get_all_start_methods()


def read_minari_hdf5(path: str, obs_keys: list[str], episodes: int, total_steps: int,
                      workers: int = 0) -> dict[str, np.ndarray]:
    """Minari's HDF5 file as flat transitions, read with h5py's low-level API: per episode only the arrays the
    agent needs (not every info key, as Minari's iterator decodes), each read straight into an array.

    HDF5 costs ~30 us per dataset opened and ~45 us per read on door-sized episodes whatever the file driver
    or chunk cache (measured with ``scripts/bench_load.py``'s file), so the episodes are split over ``workers``
    forked processes (0: the usable cores) where that pays off (``MIN_EPISODES_PER_WORKER``) and is
    safe (:func:`forked_read_allowed`). Each flattens its share, reports its length, and copies it into
    arrays in anonymous shared memory at the offset the parent sends back: the parent copies nothing."""
    import h5py

    with h5py.File(path, "r") as f:  # success flags where the first and the last episode record them
        with_success = all("infos" in f[f"episode_{i}"] and "success" in f[f"episode_{i}/infos"]
                           for i in (0, episodes - 1))
    if not workers:
        from o2o.runtime import usable_cores

        workers = usable_cores()
    workers = max(1, min(workers, episodes // MIN_EPISODES_PER_WORKER))
    if workers == 1 or not forked_read_allowed():
        return concatenate_episodes(_read_episode_range(path, obs_keys, 0, episodes, with_success))
    first = concatenate_episodes(_read_episode_range(path, obs_keys, 0, 1, with_success))
    out = {name: _shared_array((total_steps, *array.shape[1:]), array.dtype)
           for name, array in first.items() if array is not None}
    context = multiprocessing.get_context("fork")
    bounds = np.linspace(0, episodes, workers + 1).astype(int)
    pipes, procs = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        parent_end, child_end = context.Pipe()
        proc = context.Process(target=_reading_process, daemon=True,
                               args=(path, obs_keys, int(lo), int(hi), with_success, out, child_end))
        proc.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(proc)
    try:
        counts = [_answer(pipe) for pipe in pipes]
        if sum(counts) != total_steps:  # the metadata is wrong: the arrays are the wrong size, read it again
            log.warning("%s: the episodes hold %d steps, the metadata says %d; reading in one process",
                        path, sum(counts), total_steps)
            return concatenate_episodes(_read_episode_range(path, obs_keys, 0, episodes, with_success))
        for pipe, offset in zip(pipes, np.concatenate([[0], np.cumsum(counts)[:-1]])):
            pipe.send(int(offset))
        for pipe in pipes:
            _answer(pipe)
    finally:
        for pipe in pipes:  # a process still waiting for its offset (another one failed) is told to stop
            with contextlib.suppress(OSError):
                pipe.send(None)
            pipe.close()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return {name: out.get(name) for name in first}


def _shared_array(shape: tuple, dtype) -> np.ndarray:
    """An array in anonymous shared memory: forked processes write into it, the parent sees their writes."""
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize)), dtype, count).reshape(shape)


def _answer(pipe):
    message = pipe.recv()
    if isinstance(message, str):
        raise DatasetError(f"reading the dataset failed in a reading process: {message}")
    return message


def _reading_process(path: str, obs_keys: list[str], first: int, last: int, with_success: bool, out: dict,
                     pipe) -> None:
    """Episodes [first, last): flattened, their length sent, then copied into ``out`` at the offset received."""
    gc.disable()  # a collection would walk (and copy, page by page) the whole heap inherited from the parent
    try:
        flat = concatenate_episodes(_read_episode_range(path, obs_keys, first, last, with_success))
        pipe.send(len(flat["rewards"]))
        offset = pipe.recv()
        if offset is None:
            return
        for name, array in out.items():
            array[offset: offset + len(flat[name])] = flat[name]
        pipe.send(0)
    except Exception as error:  # noqa: BLE001 - the parent raises it
        with contextlib.suppress(OSError):
            pipe.send(f"{type(error).__name__}: {error}")


def _read_episode_range(path: str, obs_keys: list[str], first: int, last: int,
                        with_success: bool) -> dict[str, list]:
    import h5py

    def read(group, name: bytes) -> np.ndarray:
        dataset = h5py.h5d.open(group, name)
        out = np.empty(dataset.shape, dataset.dtype)
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out

    parts: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "success")}
    keys = [f"observations/{k}".encode() for k in obs_keys] or [b"observations"]
    with h5py.File(path, "r") as f:
        for i in range(first, last):
            ep = h5py.h5g.open(f.id, b"episode_%d" % i)
            parts["obs"].append(observation_rows([read(ep, k) for k in keys], frames_allowed=not obs_keys))
            for part, name in (("act", b"actions"), ("rew", b"rewards"), ("term", b"terminations"),
                               ("trunc", b"truncations")):
                parts[part].append(read(ep, name))
            if with_success:
                parts["success"].append(read(ep, b"infos/success"))
    return parts


def is_frames(array: np.ndarray) -> bool:
    """One episode's observations as uint8 frames (T, H, W, C), as o2o.envs.is_image_space keeps them."""
    return array.dtype == np.uint8 and array.ndim == 4


def observation_rows(arrays: list[np.ndarray], frames_allowed: bool) -> np.ndarray:
    """One episode's observations (one array per observation key) as rows the agent reads: float32 vectors,
    or uint8 frames kept as they are when the observation is one array of frames (no env.obs_keys)."""
    if frames_allowed and len(arrays) == 1 and is_frames(arrays[0]):
        return arrays[0]
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1, dtype=np.float32)


def concatenate_episodes(parts: dict[str, list]) -> dict[str, np.ndarray]:
    """Per-episode arrays (observations one longer than actions) -> flat transitions."""
    lengths = np.array([len(r) for r in parts["rew"]])
    obs = np.concatenate(parts["obs"])  # sum(lengths) + episodes rows
    row_ends = np.cumsum(lengths + 1)
    is_last = np.zeros(len(obs), bool)
    is_last[row_ends - 1] = True  # the final observation of each episode starts no transition
    is_first = np.zeros(len(obs), bool)
    is_first[np.concatenate([[0], row_ends[:-1]])] = True
    terminations = np.concatenate(parts["term"]).astype(bool)
    truncations = np.concatenate(parts["trunc"]).astype(bool)
    truncations[np.cumsum(lengths) - 1] |= ~terminations[np.cumsum(lengths) - 1]  # every episode ends at its last step
    success = None
    if len(parts["success"]) == len(lengths):  # info arrays have one entry per step, or one more (the reset's)
        success = np.concatenate([np.asarray(s, bool)[-n:] for s, n in zip(parts["success"], lengths)])
    return {"observations": obs[~is_last], "next_observations": obs[~is_first],
            "actions": np.concatenate(parts["act"]).astype(np.float32, copy=False),
            "rewards": np.concatenate(parts["rew"]).astype(np.float32, copy=False),
            "terminals": terminations, "timeouts": truncations, "success": success}
