"""Several processes, one run: torch DDP through fastai's DistributedTrainer (which prepares the
model with 🤗 accelerate). nfx adds no engine of its own; it adapts three things.

Launch: `torchrun --nproc_per_node N -m nfx finetune …` or `accelerate launch -m nfx finetune …`
(both set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT). Backend: NCCL on CUDA
(device cuda:LOCAL_RANK), gloo on the CPU.

Contract:
- `ShardedDL` (fastai's DistributedDL, adapted): rank 0's permutation of the epoch is broadcast
  (on the CPU for gloo; fastai's own broadcast needs CUDA), then dealt out micro-batch by
  micro-batch: global micro-batch k (bs × world samples) is split into `world` consecutive
  slices and rank r takes slice r. So micro-batch k over all ranks holds exactly the samples of
  micro-batch k of a one-process run with --bs bs × world, and the all-reduced mean gradient is
  the same; the train loader already keeps a whole number of optimizer steps (bs × accum ×
  world) per epoch, so no rank pads.
- `DistributedTrainer` (subclass): DDP on the model; only the training loader is sharded —
  every rank validates on the whole validation split, so every rank computes the same metrics
  (exact, not gathered approximations) and early stopping/checkpoint choices agree.
- Gradient accumulation: `MicroBatchAccumulation` runs the micro-batches before the last of a
  window under DDP's `no_sync()`, so gradients are all-reduced once per optimizer step; AGC
  (a before_step callback) then clips the all-reduced gradient, once per step. Per-sample AGC
  computes gradients outside DDP's hooks, so its callback all-reduces them (`all_reduce_mean`)
  before the step.
- The workflow (nfx.workflows.finetune) lets only rank 0 write the run folder; other ranks
  write their own scratch folder, removed at the end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default


def env_world_size() -> int:
    """Processes of this launch (1 when not launched by torchrun / accelerate). No torch import."""
    return max(1, _env_int("WORLD_SIZE", 1))


def env_rank() -> int:
    return _env_int("RANK", 0)


def is_distributed() -> bool:
    return env_world_size() > 1


def init() -> None:
    """Join the process group (once): NCCL on cuda:LOCAL_RANK, gloo on the CPU."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(torch.device("cuda", _env_int("LOCAL_RANK", 0)))
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)


def all_reduce_mean(tensors: list[Any]) -> None:
    """In place: each tensor becomes the mean over ranks (no-op in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    ws = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(ws)


def trainer_callback(device: Any) -> Any:
    """The callback that makes a Learner train with DDP on this process group."""
    # accelerate treats a CPU launch as multi-process only when told it runs on the CPU
    on_cpu = device.type == "cpu"
    return _trainer_cls()(sync_bn=not on_cpu, cpu=on_cpu)


@functools.cache
def _trainer_cls() -> Any:
    """fastai's DistributedTrainer adapted (defined on first use: fastai is imported only then)."""
    import torch
    import torch.distributed as dist
    from fastai.distributed import DistributedDL, DistributedTrainer

    class ShardedDL(DistributedDL):
        @property
        def rng(self):  # the shuffling RNG is the wrapped loader's (EpochSeed re-seeds it per epoch)
            return self.dl.rng

        @rng.setter
        def rng(self, value):
            self.dl.rng = value

        def _broadcast(self, t, rank):
            x = torch.tensor(t, dtype=torch.long)
            if dist.get_backend() == "nccl":
                x = x.cuda()
            dist.broadcast(x, rank)
            return x.cpu().tolist()

        def get_idxs(self):
            idxs = self._broadcast(list(self.dl.get_idxs()), 0)
            step = self.bs * self.world_size
            usable = (len(idxs) // step) * step  # the train loader keeps whole steps: nothing is cut here
            self.n = self.n_padded = usable
            mine: list[int] = []
            for k in range(0, usable, step):
                start = k + self.rank * self.bs
                mine += idxs[start:start + self.bs]
            return mine

        def __len__(self):
            return len(self.dl) // self.world_size

        def to_detach(self, b, cpu=True, gather=True):
            return self._to_detach(b, cpu, False)  # training-time values stay per rank

    class Trainer(DistributedTrainer):
        def before_fit(self):
            import torch.nn as nn

            model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model) if self.sync_bn else self.model
            self.learn.model = self.accelerator.prepare(model)
            self.old_dls = list(self.dls)
            self.learn.dls.loaders = [self._wrap_dl(self.dls.train), *self.old_dls[1:]]

        def _wrap_dl(self, dl):
            return dl if isinstance(dl, ShardedDL) else ShardedDL(dl, device=self.old_dls[0].device)

        def before_train(self):
            self.learn.dl = self._wrap_dl(self.learn.dl)

        def before_validate(self):  # the whole validation split on every rank
            pass

    return Trainer


def unwrap(model: Any) -> Any:
    """The module itself when DDP wraps it (state_dict keys without 'module.')."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def report(model: Any, optimizer_steps: int | None, train_images: int) -> None:
    """One line per rank on stderr (every rank, not only rank 0): what this process trained on
    and a digest of its final weights, so a launch can be checked to have trained in lock step."""
    import hashlib
    import sys

    h = hashlib.sha1()
    for k, v in sorted(unwrap(model).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    ws = env_world_size()
    steps = f"{optimizer_steps} optimizer steps, " if optimizer_steps is not None else ""
    sys.stderr.write(f"nfx rank {env_rank()}/{ws}: {steps}{train_images // ws} training images per epoch "
                     f"on this rank, weights sha1 {h.hexdigest()[:16]}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def rank_folder(out: str | os.PathLike) -> Iterator[tuple[Path, bool]]:
    """(the folder this rank writes run folders into, is rank 0). Rank 0: `out` itself; other
    ranks: a scratch folder of their own (they run the same code, so their writes go there),
    removed when the run ends, however it ends. Joins the process group first."""
    init()
    if env_rank() == 0:
        yield Path(out), True
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"nfx-rank{env_rank()}-"))
    try:
        yield scratch, False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
