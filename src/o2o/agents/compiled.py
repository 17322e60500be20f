"""``compile=true``: the whole update as one ``torch.compile`` graph, with CUDA graphs on GPUs.

The eager update is ``loss.backward()`` then ``optimizer.step()``; Dynamo breaks the graph at both. Here the
same losses (the agent's own ``compute_losses``, through ``torch.func.functional_call``) are differentiated by
``torch.func.grad``, and Adam and the target update are written with foreach ops on the optimizer's own state
tensors, so one graph holds forward, backward, Adam and the target update (the agent's ``update_targets``) (``fullgraph=True`` fails loudly at
any break) and reads nothing back to the host. The random numbers are drawn outside, by the agent's
``draw_noise``, so compiled and eager updates see the same ones (tests/test_compiled_update.py). Checkpoints
are the eager format: the state lives in ``optimizer.state`` as ``torch.optim.Adam`` keeps it.

The references for the design: the Cal-QL authors' update is one ``jax.jit`` function (nakamotoo/Cal-QL,
JaxCQL/conservative_sac.py, ``_train_step``); LeanRL (pytorch-labs/LeanRL) compiles CleanRL's updates with
``torch.compile`` and CUDA graphs. Measured speed: docs/speed.md. The private PyTorch settings and functions this
needs are in o2o.agents.torch_internals, each checked by a test.
"""
from __future__ import annotations

import logging
import time
import weakref

import torch

from o2o.agents import torch_internals as internals
from o2o.agents.modes import ACTOR_ONLY, AFTER_CRITIC

log = logging.getLogger("o2o")

RECOMPILE_LIMIT = 1024  # graphs kept for the update's code object (a run makes a few per agent it trains)
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which ActorCritic.build_optimizer uses


def adam_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
          exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lrs: torch.Tensor) -> None:
    """torch.optim.Adam's step (no weight decay, no amsgrad), in place, with tensor step counts and rates."""
    internals.foreach_add_(steps, 1.0)
    internals.foreach_lerp_(exp_avgs, grads, 1.0 - _BETA1)
    internals.foreach_mul_(exp_avg_sqs, _BETA2)
    internals.foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - _BETA2)
    for i, param in enumerate(params):
        step_size = lrs[i] / (1.0 - _BETA1 ** steps[i])
        denom = exp_avg_sqs[i].sqrt() / (1.0 - _BETA2 ** steps[i]).sqrt() + _EPS
        param.sub_(step_size * exp_avgs[i] / denom)


class CompiledUpdate:
    """Call with ``(batch, noise, update_actor)``; returns the metrics the eager update returns, as tensors."""

    def __init__(self, agent, cuda_graphs: bool, backend: str = "inductor"):
        self.agent = agent
        optimizer = agent.optimizer
        if any(group.get("weight_decay") or group.get("amsgrad") or tuple(group["betas"]) != (_BETA1, _BETA2)
               or group["eps"] != _EPS for group in optimizer.param_groups):
            raise ValueError("the compiled update implements Adam with its default betas and eps only")
        name_of = {id(p): name for name, p in agent.named_parameters()}
        # a frozen parameter in a group (the actor's fixed log-std transform) is skipped, as Adam skips it
        trainable = [(g, p) for g, group in enumerate(optimizer.param_groups) for p in group["params"] if p.requires_grad]
        self.params = [p for _, p in trainable]
        self.names = [name_of[id(p)] for p in self.params]
        self.group_of = [g for g, _ in trainable]
        skipped, first = agent.actor_side_names(), agent.pre_updated_names()  # first: trained eagerly, before
        self.trained = {True: [i for i, name in enumerate(self.names) if name not in first],
                        False: [i for i, name in enumerate(self.names) if name not in skipped | first]}
        self.trained[ACTOR_ONLY] = [i for i in self.trained[True] if i not in self.trained[False]]
        # Stale RNG in the graph would break compiled == eager (IQL's dropout): inductor calls eager's RNG
        internals.inductor_calls_eager_rng()
        # Every agent's update is this one code object to Dynamo, compiled once per agent and per variant (actor
        # step or not, calibration on or off): the default limit of 8 stops a run that retrains fresh agents
        internals.allow_recompiles(RECOMPILE_LIMIT)
        self.cuda_graphs = cuda_graphs
        self._lrs: tuple[tuple[float, ...], torch.Tensor] | None = None
        self._compiled_for: dict[bool, bool] = {}
        self._static: dict[int, weakref.ref] = {}  # tensors marked static, by id (a tensor's == is elementwise)
        self._compiled = torch.compile(self._step, fullgraph=True, backend=backend,
                                       mode="reduce-overhead" if cuda_graphs else None)

    def _state(self) -> tuple[list, list, list]:
        """Adam's moments and step counts, created as torch.optim.Adam creates them on its first step."""
        state = self.agent.optimizer.state
        fused = self.agent.optimizer.defaults.get("fused")
        for p in self.params:
            if not state[p]:
                state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
                state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.cuda_graphs:  # mutated in place by the graph: they must keep their address (new after restore)
                for t in state[p].values():
                    if t.device.type == "cuda" and (id(t) not in self._static or self._static[id(t)]() is not t):
                        internals.mark_static_address(t)
                        self._static[id(t)] = weakref.ref(t)
        return ([state[p]["exp_avg"] for p in self.params], [state[p]["exp_avg_sq"] for p in self.params],
                [state[p]["step"] for p in self.params])

    def _rates(self) -> torch.Tensor:
        """Each parameter's learning rate as one tensor (IQL's schedule changes it without a recompile)."""
        rates = tuple(group["lr"] for group in self.agent.optimizer.param_groups)
        if self._lrs is None or self._lrs[0] != rates:
            per_param = torch.tensor([rates[g] for g in self.group_of], dtype=torch.float32)
            if self.agent.optimizer.defaults.get("fused"):  # on the GPU, copied without waiting for it
                per_param = per_param.pin_memory().to(self.params[0].device, non_blocking=True)
            self._lrs = rates, per_param
        return self._lrs[1]

    def __call__(self, batch, noise: dict, mode) -> dict:
        """``mode``: the eager update's (True / False: with or without the actor's step; AFTER_CRITIC: the critic's
        step, then the actor's on the stepped critic)."""
        exp_avgs, exp_avg_sqs, steps = self._state()
        start = time.perf_counter()
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # one update per replay: the previous one's outputs are done
        metrics = self._compiled(batch, noise, mode, exp_avgs, exp_avg_sqs, steps, self._rates())
        if self.cuda_graphs:  # a replay overwrites its outputs; the metrics are averaged over many updates
            metrics = {name: value.clone() for name, value in metrics.items()}
        if not self._compiled_for.get(mode):  # each variant compiles at its first call
            self._compiled_for[mode] = True
            log.info("update compiled%s in %.1f s", " with CUDA graphs" * self.cuda_graphs, time.perf_counter() - start)
        internals.record_optimizer_step(self.agent.optimizer)
        return metrics

    def _loss(self, trained: dict, batch, noise: dict, mode):
        return torch.func.functional_call(self.agent, trained, (batch, noise, mode))

    def _step(self, batch, noise, mode, exp_avgs, exp_avg_sqs, steps, lrs) -> dict:
        state = exp_avgs, exp_avg_sqs, steps, lrs
        if mode == AFTER_CRITIC:  # two steps in one graph: the critic's, then the actor's reading the stepped critic
            metrics = self._descend(batch, noise, False, *state)
            return {**metrics, **self._descend(batch, noise, ACTOR_ONLY, *state)}
        return self._descend(batch, noise, mode, *state)

    def _descend(self, batch, noise, mode, exp_avgs, exp_avg_sqs, steps, lrs) -> dict:
        idle = self.agent.idle_names()  # read while tracing: a phase that changes it compiles its own variant
        idx = [i for i in self.trained[mode] if self.names[i] not in idle]
        trained = {self.names[i]: self.params[i].detach() for i in idx}
        grads, metrics = torch.func.grad(self._loss, has_aux=True)(trained, batch, noise, mode)
        with torch.no_grad():
            adam_([self.params[i] for i in idx], [grads[self.names[i]] for i in idx], [exp_avgs[i] for i in idx],
                  [exp_avg_sqs[i] for i in idx], [steps[i] for i in idx], lrs[idx])
            if mode != ACTOR_ONLY:  # the targets move with the critic's step
                self.agent.update_targets(mode)
        return metrics
