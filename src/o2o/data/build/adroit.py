"""Adroit datasets built from the DAPG assets (o2o.data.build.hand_dapg: the hand_dapg repository's files or their
arrays), the way D4RL made its Adroit data.

- ``o2o/door/human-v0``: the 25 teleoperated door demonstrations as recorded.
- ``o2o/<task>/expert-v0``: episodes of the DAPG expert policy with its own noise.
- ``o2o/door/cloned-v0``: a behaviour-cloning policy trained on the demonstrations,
  rolled out with noise, mixed with the demonstrations.
- ``o2o/door/awac-recipe-v0``: the demonstrations and 500 rollouts of a maximum-likelihood Gaussian BC policy, the
  recipe of AWAC's door files (the Cal-QL paper's data) as far as it is published (o2o.data.build.awac_recipe).
- ``o2o/{pen,relocate}/awac-recipe-expert-demos-v0``: the same recipe with 25 expert episodes standing in for the
  human demonstrations, which hand_dapg publishes for door only.

Every dataset records per-step task success (``infos/success``) for the binary
reward, and reference scores measured as Minari does: the mean return of a
uniform random policy (min) and of the expert policy (max).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from o2o.data.build import awac_recipe
from o2o.data.build.collectors import write_minari_atomically
from o2o.data.build.hand_dapg import door_demonstrations, expert_policy
from o2o.data.minari import minari_root
from o2o.envs import register_robotics
from o2o.rollout import rollout

log = logging.getLogger(__name__)

TASKS = {"door": "AdroitHandDoor-v1", "pen": "AdroitHandPen-v1", "relocate": "AdroitHandRelocate-v1",
         "hammer": "AdroitHandHammer-v1"}
HORIZON = {"door": 200, "pen": 100, "relocate": 200, "hammer": 200}  # D4RL's episode lengths
DOOR_HINGE_INDEX, DOOR_OPEN_ANGLE = 28, 1.35  # the env's success: hinge angle >= 1.35 rad
D4RL_EXPERT_EPISODES = 5000  # D4RL's expert datasets: 5000 full-length episodes
D4RL_CLONED_EPISODES = 2500
AWAC_TASKS = ("door", "pen", "relocate")  # the tasks of AWAC's offpolicy_hand_data files (o2o.data.awac)
AWAC_DEMONSTRATIONS = 25  # AWAC's {task}2_sparse.npy: 25 human demonstrations each


class DapgPolicy:
    """The DAPG expert: a tanh MLP Gaussian policy stored as plain arrays."""

    def __init__(self, params, rng: np.random.Generator):
        """``params``: the arrays of o2o.data.build.hand_dapg.expert_policy."""
        self.layers = [(params[f"W{i}"], params[f"b{i}"]) for i in range(3)]
        self.in_shift, self.in_scale = params["in_shift"], params["in_scale"]
        self.out_shift, self.out_scale = params["out_shift"], params["out_scale"]
        self.std = np.exp(params["log_std"])
        self.rng = rng

    def mean(self, obs: np.ndarray) -> np.ndarray:
        x = (obs - self.in_shift) / (self.in_scale + 1e-8)
        for w, b in self.layers[:-1]:
            x = np.tanh(w @ x + b)
        w, b = self.layers[-1]
        return (w @ x + b) * self.out_scale + self.out_shift

    def __call__(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        action = self.mean(obs)
        if not deterministic:
            action = action + self.std * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


@dataclass
class Episode:
    observations: np.ndarray  # (T + 1, obs_dim)
    actions: np.ndarray  # (T, act_dim)
    rewards: np.ndarray  # (T,)
    success: np.ndarray  # (T + 1,): the reset's, then after every step
    terminated: bool = False

    def __len__(self) -> int:
        return len(self.rewards)


def make_adroit(task: str) -> gym.Env:
    register_robotics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(TASKS[task], max_episode_steps=HORIZON[task])


def run_episode(env: gym.Env, policy, seed: int) -> Episode:
    run = rollout(env, policy, seed=seed)
    return Episode(run.stacked_observations(), run.actions, run.rewards.astype(np.float32), run.success,
                   run.terminated)


def human_door_episodes(demos) -> list[Episode]:
    """The 25 demonstrations as recorded (the arrays of o2o.data.build.hand_dapg.door_demonstrations); the last step
    of each (no next observation) is dropped."""
    episodes, start = [], 0
    for length in demos["episode_lengths"]:
        stop = start + int(length)
        obs = demos["observations"][start:stop].astype(np.float32)
        episodes.append(Episode(observations=obs, actions=demos["actions"][start:stop - 1].astype(np.float32),
                                rewards=demos["rewards"][start:stop - 1].astype(np.float32),
                                success=obs[:, DOOR_HINGE_INDEX] >= DOOR_OPEN_ANGLE))
        start = stop
    return episodes


def train_bc(episodes: list[Episode], steps: int, seed: int, hidden: int = 256) -> nn.Module:
    """Behaviour cloning: an MLP regressing the demonstrated actions (tanh output, MSE)."""
    torch.manual_seed(seed)
    obs = torch.as_tensor(np.concatenate([e.observations[:-1] for e in episodes]))
    act = torch.as_tensor(np.concatenate([e.actions for e in episodes]))
    mean, std = obs.mean(0), obs.std(0) + 1e-6
    net = nn.Sequential(nn.Linear(obs.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, act.shape[1]), nn.Tanh())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (256,), generator=generator)
        loss = (net((obs[idx] - mean) / std) - act[idx]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.obs_mean, net.obs_std = mean, std
    return net


def bc_policy(net: nn.Module, noise: float, rng: np.random.Generator):
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            action = net((torch.as_tensor(obs, dtype=torch.float32) - net.obs_mean) / net.obs_std).numpy()
        return np.clip(action + noise * rng.standard_normal(action.shape), -1.0, 1.0).astype(np.float32)

    return act


def reference_scores(task: str, expert: DapgPolicy, episodes: int, seed: int) -> tuple[float, float]:
    env = make_adroit(task)
    env.action_space.seed(seed)
    random_returns = [run_episode(env, lambda o: env.action_space.sample(), seed + i).rewards.sum() for i in range(episodes)]
    expert_returns = [run_episode(env, expert, seed + i).rewards.sum() for i in range(episodes)]
    env.close()
    return float(np.mean(random_returns)), float(np.mean(expert_returns))


def summarize(episodes: list[Episode]) -> dict[str, float]:
    """Size, mean return and success rate (goal reached at any step, the paper's criterion)."""
    return {"episodes": len(episodes), "transitions": int(sum(len(e) for e in episodes)),
            "mean_return": float(np.mean([e.rewards.sum() for e in episodes])),
            "success_rate": float(np.mean([e.success[1:].any() for e in episodes]))}


def write_minari(dataset_id: str, task: str, episodes: list[Episode], ref: tuple[float, float],
                 description: str) -> None:
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, e in enumerate(episodes):
        truncations = [False] * len(e)
        truncations[-1] = not e.terminated
        terminations = [False] * len(e)
        terminations[-1] = e.terminated
        buffers.append(EpisodeBuffer(id=i, observations=e.observations, actions=e.actions, rewards=list(e.rewards),
                                     terminations=terminations, truncations=truncations,
                                     infos={"success": e.success}))
    env = make_adroit(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        write_minari_atomically(dataset_id, lambda: minari.create_dataset_from_buffers(
            dataset_id=dataset_id, buffer=buffers, env=env.spec, eval_env=env.spec, algorithm_name="o2o-adroit-builder",
            author="o2o", ref_min_score=ref[0], ref_max_score=ref[1], description=description))
    env.close()


def build(assets: str | Path, namespace: str = "o2o", tasks=tuple(TASKS), expert_episodes: int = 50,
          cloned_episodes: int = 50, bc_steps: int = 2000, bc_noise: float = 0.1, reference_episodes: int = 10,
          seed: int = 0, overwrite: bool = False, awac_rollouts: int = awac_recipe.AWAC_BC_ROLLOUTS,
          awac_bc_max_steps: int = 20_000, awac_bc_weights: dict[str, Path] | None = None) -> dict[str, dict]:
    """Build the datasets (``awac_rollouts=0`` skips the AWAC recipe; ``awac_bc_weights``: task -> the AWAC-recipe
    BC weights an earlier build kept, rolled out instead of a new fit); returns a summary per dataset id."""
    import minari

    assets = Path(assets)
    rng = np.random.default_rng(seed)
    report: dict[str, dict] = {}

    def wanted(dataset_id) -> bool:
        """Whether to build it: absent, or ``overwrite`` (the old one deleted); one that exists is reported skipped."""
        if dataset_id not in minari.list_local_datasets():
            return True
        if overwrite:
            minari.delete_dataset(dataset_id)
            return True
        log.info("%s exists; skipped (--overwrite rebuilds it)", dataset_id)
        report[dataset_id] = {"skipped": True}
        return False

    def save(dataset_id, task, episodes, ref, description, extra=None):
        if wanted(dataset_id):
            write_minari(dataset_id, task, episodes, ref, description)
            report[dataset_id] = {**summarize(episodes), "ref_min_score": ref[0], "ref_max_score": ref[1],
                                  **(extra or {})}

    for task in tasks:
        expert = DapgPolicy(expert_policy(assets, task), rng)
        ref = reference_scores(task, expert, reference_episodes, seed=10_000 + seed)
        env = make_adroit(task)
        experts = [run_episode(env, expert, seed * 100_000 + i)
                   for i in tqdm(range(expert_episodes), desc=f"{task} expert", disable=None)]
        env.close()
        save(f"{namespace}/{task}/expert-v0", task, experts, ref,
             f"{expert_episodes} episodes of the DAPG expert policy for {task} sampled with its own Gaussian noise "
             f"in {TASKS[task]}, {HORIZON[task]} steps each. ref scores: uniform random policy / sampled expert, "
             f"{reference_episodes} episodes each. Built by o2o from the hand_dapg assets.")
        human = human_door_episodes(door_demonstrations(assets)) if task == "door" else None
        dataset_id = awac_recipe_id(namespace, task)
        if task in AWAC_TASKS and awac_rollouts and wanted(dataset_id):
            demos = human
            if demos is None:  # hand_dapg has human demonstrations for door only: the expert's episodes stand in
                env = make_adroit(task)
                demos = [run_episode(env, expert, seed * 100_000 + 90_000 + i) for i in range(AWAC_DEMONSTRATIONS)]
                env.close()
            data, policy = awac_dataset(task, demos, ref, awac_rollouts, awac_bc_max_steps, seed,
                                        (awac_bc_weights or {}).get(task))
            save(dataset_id, task, *data)
            # the weights beside the data: a study keeps them and rebuilds from them (no new fit: docs/data.md)
            awac_recipe.save_bc(policy, data[3], Path(minari_root()) / dataset_id / awac_recipe.BC_WEIGHTS)
        if human is None:
            continue
        save(f"{namespace}/door/human-v0", task, human, ref,
             "The 25 DAPG teleoperated door demonstrations (D4RL door-human) as recorded in the old door-v0 "
             "(rewards as recorded; success = hinge angle >= 1.35 rad; the last step of each demonstration, "
             "which has no next observation, dropped).")
        net = train_bc(human, bc_steps, seed)
        env = make_adroit(task)
        policy = bc_policy(net, bc_noise, rng)
        cloned = [run_episode(env, policy, seed * 100_000 + 50_000 + i)
                  for i in tqdm(range(cloned_episodes), desc="door cloned", disable=None)]
        env.close()
        save(f"{namespace}/door/cloned-v0", task, human + cloned, ref,
             f"The 25 door demonstrations mixed with {cloned_episodes} episodes of a behaviour-cloning policy "
             f"(MLP 256-256, {bc_steps} steps on the demonstrations) rolled out with Gaussian action noise "
             f"std {bc_noise}, as D4RL made door-cloned.")
    return report


def awac_recipe_id(namespace: str, task: str) -> str:
    """Door's data has AWAC's own kind of demonstrations; the other tasks' ids say that expert rollouts stand in."""
    return f"{namespace}/{task}/awac-recipe-v0" if task == "door" else f"{namespace}/{task}/awac-recipe-expert-demos-v0"


def awac_dataset(task: str, demos: list[Episode], ref: tuple[float, float], rollouts: int, bc_max_steps: int,
                 seed: int, bc_weights: Path | None = None):
    """The demonstrations and ``rollouts`` episodes of the maximum-likelihood Gaussian BC policy fit on them, or kept
    in ``bc_weights`` from an earlier build (save's arguments after the id and task, and the policy)."""
    observations = np.concatenate([e.observations[:-1] for e in demos])
    actions = np.concatenate([e.actions for e in demos])
    if bc_weights is not None:
        policy, fit = awac_recipe.load_bc(bc_weights, observations.shape[1], actions.shape[1])
        log.info("%s AWAC-recipe BC: the weights kept in %s, not fit again", task, bc_weights)
        fit.setdefault("bc_step_kept", "kept")
        fit.setdefault("bc_action_std_mean", float("nan"))
    else:
        policy, fit = awac_recipe.fit_gaussian_bc(observations, actions, seed, bc_max_steps)
    if bc_weights is None:
        log.info("%s AWAC-recipe BC: kept step %d of %d (held-out NLL %.2f, train %.2f), mean action std %.3f", task,
                 fit["bc_step_kept"], bc_max_steps, fit["bc_held_out_nll"], fit["bc_train_nll"],
                 fit["bc_action_std_mean"])
    env = make_adroit(task)
    act = awac_recipe.sampling_policy(policy, np.random.default_rng([seed, 7]))
    episodes = [run_episode(env, act, seed * 100_000 + 70_000 + i)
                for i in tqdm(range(rollouts), desc=f"{task} AWAC-recipe BC", disable=None)]
    env.close()
    source = ("the 25 DAPG door demonstrations" if task == "door" else
              f"{len(demos)} episodes of the DAPG {task} expert policy with its own noise standing in for AWAC's 25 "
              f"human demonstrations (none are public for {task})")
    description = (
        f"Built by o2o; NOT AWAC's {task}2_sparse.npy / {task}_bc_sparse4.npy (the Cal-QL paper's data: read those "
        f"with env.dataset.path). Their recipe as far as it is published: {source}, and {rollouts} episodes of "
        f"{HORIZON[task]} steps of a Gaussian BC policy fit on them (rlkit's GaussianPolicy 256-256 as AWAC's hand "
        f"experiments configure it, fit by maximum likelihood, kept at step {fit['bc_step_kept']} of {bc_max_steps} by "
        f"held-out NLL) sampled with its own std (mean {fit['bc_action_std_mean']:.3f}). Unpublished and so chosen "
        "here: the BC steps, any extra noise. See o2o.data.build.awac_recipe.")
    return (demos + episodes, ref, description, fit), policy
