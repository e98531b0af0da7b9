"""Training on several processes with PyTorch's own engine (`torchrun`): DDP by default, FSDP2 on request.

Launched under `torchrun --nproc-per-node N [--nnodes ...]`, a training command reads the rank and world size
torchrun sets, joins the process group (NCCL on GPUs, gloo on CPUs), and steps a replica (DDP) or a shard
(FSDP2, `fully_shard` per backbone block, Mamba2 blocks included) of the model. Every rank draws the same global
batch from the same seeded sampler and trains on its slice, so the updates equal one process's on the whole
batch, and a checkpoint (full tensors, written by rank 0 only) resumes at any world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def slice(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (the batch must divide evenly)."""
        per = global_batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of scalar figures over ranks (for the log; every rank must call it)."""
        if not self.enabled or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist()))

    def gather(self, value):
        """Every rank's `value` (a picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def main_first(self, make):
        """`make()` on rank 0 first (it writes a cache, e.g. the encoded dialogues), then on the other ranks,
        which read that cache."""
        made = make() if self.main else None
        self.barrier()
        return made if made is not None else make()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (one process, no group, otherwise)."""
    from agent.training.common import pick_device

    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=pick_device(device))
    want_cuda = pick_device(device).type == "cuda"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        from datetime import timedelta

        # generous: rank 0 encodes the dialogues (minutes) while the others wait at the first barrier
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=2),
                                device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank=rank, world=world, local_rank=local, device=dev)


def wrap(module: nn.Module, ctx: DistContext, fsdp: bool = False, blocks: list[nn.Module] | None = None) -> nn.Module:
    """DDP (a full replica per rank) or FSDP2 (parameters, gradients and optimizer state sharded; each of `blocks`
    gathered only for its own forward and backward). One process: the module as is."""
    if not ctx.enabled:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in blocks or []:
            fully_shard(block)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # every parameter gets a gradient each step (LMObjective touches the ones a batch may not use)
    return DistributedDataParallel(module, device_ids=ids)


def full_state(model: nn.Module, opt: torch.optim.Optimizer | None, ctx: DistContext, fsdp: bool):
    """(model state, optimizer state) as full CPU tensors keyed by parameter name: the same checkpoint whatever
    the world size or sharding. Every rank must call it; only rank 0's copy is meant to be saved."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=fsdp and ctx.enabled)
    inner = unwrap(model)
    model_sd = get_model_state_dict(inner, options=options)
    opt_sd = get_optimizer_state_dict(inner, opt, options=options) if opt is not None else None
    return model_sd, opt_sd


def load_full_state(model: nn.Module, opt: torch.optim.Optimizer | None, model_sd: dict, opt_sd: dict | None,
                    ctx: DistContext, fsdp: bool) -> None:
    """Load a `full_state` checkpoint into a (possibly sharded) model and its optimizer, at any world size."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    inner = unwrap(model)
    set_model_state_dict(inner, model_sd, options=options)
    if opt is not None and opt_sd is not None:
        set_optimizer_state_dict(inner, opt, opt_sd, options=options)


def resume(ckpt: dict, model_sd: dict, model: nn.Module, opt: torch.optim.Optimizer, sched, batch_rng,
           ctx: DistContext, fsdp: bool) -> int:
    """Continue a run from its checkpoint (`model_sd` keyed as the wrapped module names it), at any world size:
    weights, optimizer, schedule, RNG streams; the step to continue from."""
    from agent.training.common import set_rng_state

    if ckpt.get("format", 1) >= 2:
        load_full_state(model, opt, model_sd, ckpt["opt"], ctx, fsdp)
    else:  # written before distributed training: optimizer state keyed by parameter order
        load_full_state(model, None, model_sd, None, ctx, fsdp)
        opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    set_rng_state(ckpt["rng"])
    batch_rng.setstate(ckpt["batch_rng"])
    return ckpt["step"]


def run_mode(ctx: DistContext, fsdp: bool) -> str:
    return ("FSDP" if fsdp else "DDP") if ctx.enabled else "one process"


def describe(ctx: DistContext, fsdp: bool, batch: int) -> str:
    """How this run is spread, for its opening line."""
    detail = f" x {ctx.world}, {batch // ctx.world} rows per rank" if ctx.enabled else ""
    return run_mode(ctx, fsdp) + detail


def memory_figures(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, float]:
    """This rank's training state in MB (its own shards under FSDP: parameters, gradients, optimizer state) and
    its peak resident memory (whole process) in MB."""
    import resource

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = sum(local_bytes(p) for p in model.parameters())
    grads = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    states = sum(local_bytes(v) for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"state_mb": round((params + grads + states) / 2**20, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def names_outside(module: nn.Module, blocks) -> set[str]:
    """Names of the trained parameters of `module` not inside the (FSDP-sharded) `blocks`: by name, because FSDP
    replaces the parameter objects when it shards them."""
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    return {n for n, p in module.named_parameters() if p.requires_grad and id(p) not in in_blocks}


def zero_touch(module: nn.Module, names: set[str]) -> torch.Tensor:
    """0 x one element of each named parameter, to add to the loss: parameters a batch may not use (the image path
    in a batch without a picture) get a zero gradient instead of none, so every rank reduces the same tensors
    (FSDP needs it; DDP need not search for unused ones) and one process updates exactly as many ranks do."""
    return 0 * sum(p.reshape(-1)[:1].sum() for n, p in module.named_parameters() if n in names)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model
