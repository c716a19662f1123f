"""Data-parallel training under ``torchrun``: the process group, sharding, collectives.

Every trainer of medsynth (the denoiser's, the autoencoder's) runs the same code in one process or
in N processes started by ``torchrun``; this module holds what differs between the two::

    with distributed("auto") as ctx:           # reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK
        model = build().to(ctx.device)
        wrapped = ctx.wrap(model)                # DistributedDataParallel when world_size > 1
        for step in range(start, steps):
            idx = sampler.indices(step)          # the GLOBAL batch: a function of (seed, step) only
            gen = torch.Generator().manual_seed(step_seed)
            noise = torch.randn((len(idx), 1, h, w), generator=gen)   # drawn for the global batch...
            mine = ctx.shard_range(len(idx))     # ...and sliced, so N processes see what 1 sees
            chunks = micro_batches(mine.stop - mine.start, micro_batch)
            for i, chunk in enumerate(chunks):
                with ctx.accumulate(wrapped, sync=i == len(chunks) - 1):
                    loss = mean_loss(wrapped, idx[mine][chunk], noise[mine][chunk])
                    (loss * ctx.loss_weight(chunk.stop - chunk.start, len(idx))).backward()
            optimizer.step()
            if ctx.is_main: save_checkpoint(model, ...)   # the unwrapped model: same keys as 1 process

Rules that keep N processes equal to one (up to float rounding, the test's tolerance):

- the batch of a step is the global batch of the single-process run; process ``r`` of ``N`` takes
  the contiguous slice :meth:`DistContext.shard_range` (the first ``B % N`` processes one more);
- every random draw of a step (augmentation, noise, timesteps, label dropout) is drawn for the
  global batch from the step's generator on every process, then sliced the same way;
- each micro-batch's *mean* loss is multiplied by :meth:`DistContext.loss_weight` before
  ``backward``; DDP's gradient average then equals the gradient of the global batch's mean loss,
  for any number of processes, uneven shards and any micro-batch size (gradient accumulation);
- only the main process (rank 0) writes checkpoints, logs, preview images and shows progress;
  decisions that must agree (stop on a time budget, on Ctrl-C, a non-finite loss) go through a
  collective: :class:`DeferredInterrupt` turns Ctrl-C into a request that the step's all-reduce
  shares, so every process stops after the same complete step and rank 0 saves it.

gloo is used on the CPU, nccl on CUDA (gloo when this torch build has no nccl). Without torchrun
(or with ``WORLD_SIZE=1``) nothing is initialised and every helper is a no-op, so single-process
runs stay bitwise what they were.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from medsynth import errors
from medsynth.errors import ConfigError, DeviceError, MedsynthError

T = TypeVar("T")

#: How long a process waits in a collective for the others (rank 0 writing a checkpoint or a
#: preview grid keeps the others waiting in the next step's all-reduce).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def pick_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when torch sees a device, else the CPU; ``"cuda"`` without one is refused."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly one-process) data-parallel job.

    ``rank`` 0..world_size-1 over all nodes, ``local_rank`` on this node (the CUDA device index),
    ``device`` where this process computes, ``backend`` "gloo"/"nccl" (None: a single process,
    no process group). Build it with :func:`init_distributed` or :func:`distributed`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1

    # -- the model ------------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (which broadcasts rank 0's weights), or as is.

        Keep a reference to ``model`` itself for checkpoints and EMA: its parameter names carry no
        ``module.`` prefix, so a checkpoint does not depend on the number of processes.
        Buffers are synchronised once, not in every forward pass (the UNets have none that change in
        training).
        """
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffer broadcast in forward: it is a collective, and processes with uneven shards run
        # different numbers of micro-batch passes. (torch ≥ 2.13 renamed the switch.)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_buffer_sync: dict[str, Any] = {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
            else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=ids, **no_buffer_sync)

    def accumulate(self, wrapped: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for one micro-batch's forward and backward: gradients are all-reduced only on
        the last one (``sync=True``); earlier ones accumulate locally (DDP's ``no_sync``)."""
        no_sync = getattr(wrapped, "no_sync", None)
        if sync or no_sync is None:
            return contextlib.nullcontext()
        return no_sync()  # type: ignore[no-any-return]

    # -- the batch ------------------------------------------------------------------------------

    def shard_range(self, n: int) -> slice:
        """This process's contiguous part of a global batch of ``n``: ``n // world_size`` items,
        one more on the first ``n % world_size`` processes. Refuses ``n < world_size``."""
        if n < self.world_size:
            raise ConfigError(
                f"a global batch of {n} cannot be split over {self.world_size} processes (each needs ≥ 1 image); "
                "raise the batch size or start fewer processes")
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def shard(self, global_items: T) -> T:
        """``global_items[shard_range(len(global_items))]`` (a numpy array, tensor or sequence)."""
        return global_items[self.shard_range(len(global_items))]  # type: ignore[index, arg-type, no-any-return]

    def loss_weight(self, micro_batch: int, global_batch: int) -> float:
        """The factor of a micro-batch's mean loss so that DDP's averaged gradient is the gradient
        of the global batch's mean loss: ``micro_batch * world_size / global_batch`` (1.0 for one
        process without accumulation)."""
        return micro_batch * self.world_size / global_batch

    # -- collectives (no-ops for one process) ---------------------------------------------------

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``values`` over all processes (a new tensor on ``values``' device)."""
        out = values.detach().clone().to(self.device)
        if self.is_distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(values.device)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``values`` over all processes."""
        out = self.all_reduce_sum(values)
        return out / self.world_size if self.is_distributed else out

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.is_distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on the main process only; every process raises the MedsynthError it raised.

        Use it for the writes that precede training (creating the run folder), so that a refusal
        is reported by every process instead of leaving the others waiting. Returns ``fn()`` on
        the main process, None elsewhere.
        """
        result: T | None = None
        failure: tuple[str, str, str | None] | None = None
        if self.is_main:
            try:
                result = fn()
            except MedsynthError as exc:
                if not self.is_distributed:
                    raise
                failure = (type(exc).__name__, exc.message, str(exc.path) if exc.path is not None else None)
        if self.is_distributed:
            box: list[Any] = [failure]
            dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
            failure = box[0]
        if failure is not None:
            cls = getattr(errors, failure[0], MedsynthError)
            if not (isinstance(cls, type) and issubclass(cls, MedsynthError)):
                cls = MedsynthError
            raise cls(failure[1], failure[2])
        return result

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def describe(self) -> str:
        """``""`` for one process, else e.g. ``", 2 processes (gloo)"`` (for hardware strings)."""
        return f", {self.world_size} processes ({self.backend})" if self.is_distributed else ""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(device: str = "auto") -> DistContext:
    """Join the job ``torchrun`` started (env ``WORLD_SIZE`` > 1), or describe a single process.

    ``device`` is ``auto``/``cpu``/``cuda`` as in the training configuration: CUDA processes use
    ``cuda:LOCAL_RANK`` and nccl, CPU processes gloo. An already initialised process group (a
    caller's) is reused and left open by :meth:`DistContext.close`.
    """
    base = pick_device(device)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", rank)
        dev = _cuda_device(local) if base.type == "cuda" else base
        return DistContext(rank, world, local, dev, str(dist.get_backend()), owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(device=base)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE={world} but {name} is not set; start the processes with torchrun")
    if not dist.is_available():
        raise DeviceError("this torch build has no torch.distributed; train in one process")
    dev = _cuda_device(local) if base.type == "cuda" else base
    backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
    try:
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                                timeout=COLLECTIVE_TIMEOUT)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise DeviceError(f"cannot join the {backend} process group of {world} processes ({first})") from None
    return DistContext(rank, world, local, dev, backend, owns_group=True)


def _cuda_device(local_rank: int) -> torch.device:
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceError(f"LOCAL_RANK={local_rank} but this node has {count} CUDA device(s); "
                          "start at most one process per GPU (torchrun --nproc_per_node)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """:func:`init_distributed` as a context manager that leaves the group it joined."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        ctx.close()


def micro_batches(n: int, size: int) -> list[slice]:
    """``n`` items in consecutive slices of at most ``size`` (0 = one slice of all ``n``)."""
    if size <= 0 or size >= n:
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class DeferredInterrupt:
    """While active, Ctrl-C (SIGINT) sets :attr:`requested` instead of raising.

    With ``escalate`` a second Ctrl-C raises KeyboardInterrupt at once (one process: the way out of
    a slow step). Use ``escalate=not ctx.is_distributed``: under torchrun a Ctrl-C in the terminal
    reaches every worker twice (from the terminal and forwarded by torchrun), and torchrun kills
    workers that have not finished after its grace period anyway.

    A training loop checks the flag at the end of a step (through its per-step collective, so all
    processes agree), saves a checkpoint of that complete step and then raises KeyboardInterrupt
    itself. Without it, an interrupt between ``optimizer.step()`` and the step counter saves an
    inconsistent checkpoint, and under torchrun the processes stop in different places (one waits
    in an all-reduce for the others). Only the main thread can handle signals; elsewhere this is
    a no-op. SIGINT exists on Windows too (Ctrl-C in a console).
    """

    def __init__(self, escalate: bool = True) -> None:
        self.requested = False
        self.escalate = escalate
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.escalate:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
            self._installed = False
