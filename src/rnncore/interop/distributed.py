"""Data-parallel training over MPI (through mpi4py, imported when first needed): every
rank holds the whole model, runs forward and backward on its own shard of each global
batch, and the gradients are averaged over the ranks before the optimizer steps, so that
every rank takes the same step from the same parameters.

    dp = DataParallel(model).broadcast_parameters()    # rank 0's weights everywhere
    rows = shard(global_batch, dp.comm)                # this rank's items
    ... forward on x[:, rows], backward ...
    dp.allreduce_gradients()                           # the mean over the ranks
    clip, optimizer.step()

`DataParallel` is also a model itself (called, `backward`, `parameters()`, `grads`,
`zero_grad`, `train`, `eval`, `state_dict`): its `backward` back-propagates through the
model and then averages, so `rc.train.train_step` and `rc.train.truncated_bptt` run
data-parallel when given it, clipping the global norm of the averaged gradients.

Gradients travel in one contiguous buffer per dtype, one collective per call (the fusion
buffer of Horovod): a model's gradients cost one message of its parameter count, however
many arrays it has. MPI promises no order of reduction, so "fast" sums may differ in the
last bit from run to run or between process layouts; "exact" gathers every rank's buffer
and adds them in rank order on every rank, bitwise the same in every run.

A rank that raises while the others wait in a collective would hang the job: run each
rank's work inside `abort_on_error()`, which prints the error and calls MPI_Abort, ending
every rank with a clear message.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any, Optional, Union

import numpy as np

from ..core import validate
from . import checkpoint

__all__ = ["DataParallel", "shard", "abort_on_error"]

_MODES = ("fast", "exact")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("rnncore.distributed needs mpi4py and an MPI library (Open MPI or MPICH): "
                          "pip install mpi4py (or the extra: pip install 'rnncore[mpi]')") from exc
    return MPI


def _communicator(comm):
    MPI = _mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm: expected an mpi4py intracommunicator (MPI.COMM_WORLD), got {type(comm).__name__}")
    return comm


def shard(n_items: int, comm: Any = None) -> np.ndarray:
    """The indices of this rank's share of a global batch of `n_items`: contiguous, in
    rank order, every item in exactly one rank's share; the first ``n_items % size``
    ranks take one item more. The same on every run.

    Parameters
    ----------
    n_items : int >= 1
        Items (sequences) in the global batch.
    comm : mpi4py intracommunicator, optional
        The ranks sharing the batch; None: MPI.COMM_WORLD.

    Returns
    -------
    indices : np.ndarray of int64, (n_local,)
        This rank's items; empty on the last ranks when ``n_items < size``.

    Raises
    ------
    ValueError
        n_items not a positive int.
    TypeError
        comm is not an intracommunicator.
    ImportError
        mpi4py is not installed.

    Examples
    --------
    >>> import rnncore.distributed as rd
    >>> rd.shard(10)                 # a single process holds every item
    array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    n_items = validate.positive_int("n_items", n_items)
    comm = _communicator(comm)
    base, extra = divmod(n_items, comm.Get_size())
    rank = comm.Get_rank()
    start = rank * base + min(rank, extra)
    return np.arange(start, start + base + (rank < extra), dtype=np.int64)


@contextlib.contextmanager
def abort_on_error(comm: Any = None, errorcode: int = 1) -> Iterator[None]:
    """Within the block, an exception on this rank prints its traceback and the rank's
    number to stderr and calls ``comm.Abort(errorcode)``, which ends every rank of the job
    (mpirun then exits non-zero) instead of leaving the others waiting forever in their
    next collective.

    Parameters
    ----------
    comm : mpi4py intracommunicator, optional
        The job to end; None: MPI.COMM_WORLD.
    errorcode : int, default 1
        The exit status MPI_Abort passes on.

    Raises
    ------
    TypeError
        comm is not an intracommunicator.
    ImportError
        mpi4py is not installed.

    Examples
    --------
    >>> import rnncore.distributed as rd
    >>> with rd.abort_on_error():
    ...     total = sum(range(4))
    >>> total
    6
    """
    comm = _communicator(comm)
    try:
        yield
    except BaseException as exc:  # KeyboardInterrupt and SystemExit too: any way out leaves the others waiting
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            raise
        traceback.print_exc()
        sys.stderr.write(f"rnncore.distributed: rank {comm.Get_rank()} of {comm.Get_size()} raised "
                         f"{type(exc).__name__}: {exc}; aborting all ranks (MPI_Abort, error code {errorcode})\n")
        sys.stderr.flush()
        comm.Abort(errorcode)


class DataParallel:
    """A model shared by the ranks of an MPI communicator, for data-parallel training.

    Parameters
    ----------
    model : model
        Anything with ``parameters()`` and ``grads`` (dicts of live arrays by name): a
        layer, Linear, Sequential. Every rank builds the same model (the same names,
        shapes and dtypes, checked here); the weights need not agree until
        `broadcast_parameters`.
    comm : mpi4py intracommunicator, optional
        The ranks; None: MPI.COMM_WORLD.
    mode : {"fast", "exact"}, default "fast"
        "fast": one ``Allreduce`` per dtype, in whatever order MPI reduces. "exact": one
        ``Allgather`` per dtype and the ranks' buffers added in rank order, on every rank:
        bitwise the same from run to run (at the cost of size times the memory and
        traffic).

    Attributes
    ----------
    module : model
        The model wrapped.
    comm : mpi4py intracommunicator
    rank, size : int
        This rank and the number of ranks.

    Raises
    ------
    TypeError
        model without parameters() and grads, or comm not an intracommunicator.
    ValueError
        mode not one of the two; the ranks' models differ (raised on every rank).
    ImportError
        mpi4py is not installed.

    Examples
    --------
    >>> import numpy as np, rnncore as rc, rnncore.distributed as rd
    >>> model = rc.Sequential(rc.GRU(2, 4, dtype=np.float64, seed=0), rc.Linear(4, 1, dtype=np.float64, seed=1))
    >>> dp = rd.DataParallel(model).broadcast_parameters()
    >>> x = np.ones((5, 8, 2))[:, rd.shard(8, dp.comm)]
    >>> loss, states = rc.train.train_step(dp, rc.MSELoss(), rc.optim.SGD(model, lr=0.1), x, x[..., :1], max_norm=1.0)
    >>> dp.size, sorted(dp.grads) == sorted(model.grads)
    (1, True)
    """

    def __init__(self, model: Any, comm: Any = None, mode: str = "fast") -> None:
        if not (callable(getattr(model, "parameters", None)) and isinstance(getattr(model, "grads", None), dict)):
            raise TypeError(f"model: expected a model with parameters() and grads (a layer, Linear, Sequential), "
                            f"got {type(model).__name__}")
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self.comm = _communicator(comm)
        self.module = model
        self.mode = mode
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        params = model.parameters()
        layout = [(name, value.shape, value.dtype.str) for name, value in params.items()]
        # every rank sees every layout, so a mismatch raises on all of them alike (no rank
        # left waiting in a collective the others never reach)
        layouts = self.comm.allgather(layout)
        differ = [r for r, other in enumerate(layouts) if other != layouts[0]]
        if differ:
            raise ValueError(f"model: expected the same parameter names, shapes and dtypes on every rank, got "
                             f"ranks {differ} differing from rank 0 ({len(layouts[differ[0]])} vs "
                             f"{len(layout)} arrays on this rank)")
        # names by dtype, in the model's order: each group one contiguous buffer; the last
        # slot of a buffer carries the rank's weight, so one message holds both
        self._groups: dict[np.dtype, list[str]] = {}
        for name, value in params.items():
            self._groups.setdefault(value.dtype, []).append(name)
        self._buffers = {dtype: np.empty(sum(params[n].size for n in names) + 1, dtype=dtype)
                         for dtype, names in self._groups.items()}

    # -- the collectives -----------------------------------------------------------------
    def _pack(self, arrays, dtype):
        buffer = self._buffers[dtype]
        at = 0
        for name in self._groups[dtype]:
            value = arrays[name]
            buffer[at:at + value.size] = value.reshape(-1)
            at += value.size
        return buffer

    def _unpack(self, flat, arrays, dtype):
        at = 0
        for name in self._groups[dtype]:
            value = arrays[name]
            value[...] = flat[at:at + value.size].reshape(value.shape)
            at += value.size

    def broadcast_parameters(self, root: int = 0) -> DataParallel:
        """Copy rank `root`'s parameters into every rank's model, in place (one
        ``Bcast`` per dtype), so that all ranks start from the same weights.

        Parameters
        ----------
        root : int, default 0
            The rank whose parameters everyone takes.

        Returns
        -------
        DataParallel
            self.

        Raises
        ------
        ValueError
            root not a rank of the communicator.
        """
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < self.size:
            raise ValueError(f"root: expected a rank in [0, {self.size}), got {root!r}")
        params = self.module.parameters()
        for dtype in self._groups:
            buffer = self._pack(params, dtype)
            self.comm.Bcast(buffer, root=int(root))
            self._unpack(buffer, params, dtype)
        return self

    def allreduce_gradients(self, count: Optional[int] = None) -> None:
        """Replace every rank's gradients, in place, by their mean over the ranks.

        With `count`, the ranks are weighted by it: pass the number of items this rank's
        gradient averages over (its shard's size), and the result is the gradient of the
        mean over the whole global batch even when the shards differ in size (10 items
        over 3 ranks). Without it every rank weighs the same.

        Parameters
        ----------
        count : int >= 0, optional
            This rank's weight; None: 1 on every rank.

        Returns
        -------
        None

        Raises
        ------
        ValueError
            count not an int >= 0, or every rank's count 0 (raised on every rank).
        """
        if count is None:
            weight = 1
        elif isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"count: expected an int >= 0, got {count!r}")
        else:
            weight = int(count)
        grads = self.module.grads
        for dtype in self._groups:
            buffer = self._pack(grads, dtype)
            if weight != 1:
                buffer[:-1] *= weight
            buffer[-1] = weight
            if self.mode == "fast":
                total = buffer
                self.comm.Allreduce(_mpi().IN_PLACE, total, op=_mpi().SUM)
            else:
                gathered = np.empty((self.size, buffer.size), dtype=dtype)
                self.comm.Allgather(buffer, gathered)
                total = gathered[0].copy()
                for row in gathered[1:]:
                    total += row
            if total[-1] == 0:
                raise ValueError("count: expected a positive count on at least one rank, got 0 on every rank")
            total[:-1] /= total[-1]
            self._unpack(total, grads, dtype)

    # -- the model's face, so that the training loop runs data-parallel ------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward, unchanged (on this rank's shard)."""
        return self.module(*args, **kwargs)

    forward = __call__

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's backward, then `allreduce_gradients()`: the gradients that
        follow are the mean over the ranks. Returns what the model's backward returns."""
        result = self.module.backward(*args, **kwargs)
        self.allreduce_gradients()
        return result

    def parameters(self) -> dict[str, np.ndarray]:
        """The wrapped model's live parameters."""
        return self.module.parameters()

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """The wrapped model's live gradients."""
        return self.module.grads

    def zero_grad(self) -> None:
        self.module.zero_grad()

    def train(self, mode: bool = True) -> DataParallel:
        self.module.train(mode)
        return self

    def eval(self) -> DataParallel:
        return self.train(False)

    @property
    def training(self) -> bool:
        return self.module.training

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.module.state_dict()

    def load_state_dict(self, mapping: Any, strict: bool = True) -> None:
        self.module.load_state_dict(mapping, strict)

    def save(self, path: Union[str, os.PathLike], optimizer: Any = None) -> None:
        """Checkpoint the model (and optimizer) as `rnncore.save` does, written by rank 0
        only; every rank returns once the file is complete, so that any of them may read
        it at once. Resume on every rank with ``model = rnncore.load(path, optimizer)``
        and a new DataParallel around it.

        Parameters
        ----------
        path : str or os.PathLike
            The file; on a file system every rank sees, to resume on all of them.
        optimizer : optimizer or dict, optional
            As `rnncore.save` takes.

        Returns
        -------
        None

        Raises
        ------
        RuntimeError
            Rank 0 failed to write; raised on every rank, with rank 0's error.
        """
        error = None
        if self.rank == 0:
            try:
                checkpoint.save(path, self.module, optimizer)
            except Exception as exc:  # told to every rank, so that none waits for a file that never comes
                error = f"{type(exc).__name__}: {exc}"
        error = self.comm.bcast(error, root=0)
        if error is not None:
            raise RuntimeError(f"DataParallel.save: rank 0 could not write {os.fspath(path)!r}: {error}")

    def __repr__(self) -> str:
        return f"DataParallel({self.module!r}, mode={self.mode!r}, rank={self.rank}, size={self.size})"
