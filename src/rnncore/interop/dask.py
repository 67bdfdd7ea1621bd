"""Scoring many series with a trained model: on a Dask cluster (`score`; dask and
distributed imported when first needed), or on the cores of one machine (`score_local`,
with concurrent.futures threads).

The batch is cut into chunks of whole series along its batch axis (axis 1 of a
time-major (T, B, I) input, axis 0 when the model is batch_first), each chunk one task,
and the outputs are put back in the input's order. Series are independent in a forward
pass, and on the compiled backend every product sums a row in one order whatever the
rows beside it, so a chunk's rows come out bit for bit as they would from the whole
batch; the feed-forward pieces (Linear's NumPy product) and the other backends' BLAS
products are kept in the same blocks of rows as in the whole batch (see `score`).

A task should be worth its overhead (Dask's is 200 us to 1 ms per task): by default a
chunk holds as many series as the model scores in about 100 ms, measured once here by
timing the model on a probe of at most 256 series (a timed probe, not a FLOP count:
the kernels' speed depends on sizes, threads and CPU). The compiled kernels release the
GIL, so the threads of a worker (or of `score_local`) compute at the same time.
"""
from __future__ import annotations

import concurrent.futures
import copy
import math
import os
import time
from typing import Any, Optional

import numpy as np

from ..core import validate

__all__ = ["score", "score_local"]

TASK_SECONDS = 0.1  # the work a default chunk holds
_PROBE = 256  # series timed to size the default chunks
ROW_BLOCK = 64  # chunks start at multiples of this many series (see _chunk_sizes)


def _dask():
    try:
        import dask.array as da
    except ImportError as exc:
        raise ImportError("rnncore.dask needs dask and distributed: pip install 'dask[array]' distributed "
                          "(or the extra: pip install 'rnncore[dask]')") from exc
    return da


def _client():
    """The active distributed Client, or None (then dask's own scheduler runs the tasks)."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:  # no client started in this process
        return None


def _batch_first(model):
    first = model.modules[0] if hasattr(model, "modules") and model.modules else model
    return bool(getattr(first, "batch_first", False))


def _inference_copy(model):
    """An eval-mode copy: scoring keeps no training context and draws no dropout, and the
    caller's model keeps its mode."""
    if not callable(model) or not callable(getattr(model, "eval", None)):
        raise TypeError(f"model: expected an rnncore model (a layer or Sequential), got {type(model).__name__}")
    return copy.deepcopy(model).eval()


def _checked(series, lengths, batch_axis):
    """(series, lengths) checked for shape: series 3-D, lengths ints in [1, T] of one per series."""
    if getattr(series, "ndim", None) != 3:
        raise ValueError(f"series: expected a 3-D array ({'B, T' if batch_axis == 0 else 'T, B'}, I), got "
                         f"{'shape ' + str(series.shape) if hasattr(series, 'shape') else type(series).__name__}")
    n_series, steps = series.shape[batch_axis], series.shape[1 - batch_axis]
    if n_series == 0:
        raise ValueError("series: expected at least one series, got a batch of 0")
    if lengths is None:
        return series, None
    if getattr(lengths, "ndim", None) != 1 or lengths.shape[0] != n_series:
        raise ValueError(f"lengths: expected a 1-D array of {n_series} ints (one per series), got "
                         f"{'shape ' + str(lengths.shape) if hasattr(lengths, 'shape') else type(lengths).__name__}")
    if np.dtype(lengths.dtype).kind not in "iu":
        raise TypeError(f"lengths: expected ints, got dtype {lengths.dtype}")
    if isinstance(lengths, np.ndarray) and lengths.size and (lengths.min() < 1 or lengths.max() > steps):
        raise ValueError(f"lengths: expected values in [1, {steps}], got {lengths.min()} to {lengths.max()}")
    return series, lengths


def _run(model, block, lengths, batch_axis):
    """The model's output y for one chunk of series (also the task a Dask worker runs)."""
    return model(np.asarray(block), lengths=None if lengths is None else np.asarray(lengths))[0]


def _default_chunk(model, series, lengths, batch_axis):
    """Series per chunk for about TASK_SECONDS of work, from the model timed on a probe."""
    n_probe = min(_PROBE, series.shape[batch_axis])
    index = [slice(None)] * 3
    index[batch_axis] = slice(0, n_probe)
    probe = np.asarray(series[tuple(index)])
    probe_lengths = None if lengths is None else np.asarray(lengths[:n_probe])
    _run(model, probe, probe_lengths, batch_axis)  # the first call builds caches
    started = time.perf_counter()
    _run(model, probe, probe_lengths, batch_axis)
    per_series = max(time.perf_counter() - started, 1e-9) / n_probe
    return math.ceil(TASK_SECONDS / per_series)


def _chunk_sizes(n_series, chunk):
    """`n_series` cut into chunks of `chunk` series rounded up to a multiple of
    ROW_BLOCK, the rest joined to the last whole chunk. BLAS computes rows in blocks of a
    few, and the last rows of a product by other code: starting every chunk at a multiple
    of the block keeps each series in the position it has in the whole batch, so it is
    rounded the same."""
    chunk = ROW_BLOCK * math.ceil(chunk / ROW_BLOCK)
    whole, rest = divmod(n_series, chunk)
    if whole == 0:
        return (n_series,)
    sizes = [chunk] * whole
    if rest >= ROW_BLOCK:
        sizes.append(rest)
    else:
        sizes[-1] += rest
    return tuple(sizes)


def _chunk_argument(chunk, model, series, lengths, batch_axis):
    if chunk is None:
        return _default_chunk(model, series, lengths, batch_axis)
    return validate.positive_int("chunk", chunk)


def score(model: Any, series: Any, chunk: Optional[int] = None, lengths: Any = None) -> Any:
    """The model's output for every series, computed by Dask in chunks of series.

    With a distributed Client active (``distributed.Client(address)`` or a
    ``LocalCluster``), the model is sent to every worker once (``Client.scatter`` with
    ``broadcast=True``) and each task names it; without one, dask's own scheduler (threads)
    runs the tasks here.

    Parameters
    ----------
    model : layer or Sequential
        Called as ``model(x, lengths=lengths)``; its first output is scored. An eval-mode
        copy is used: `model` itself is not touched.
    series : dask or numpy array, (T, B, I), or (B, T, I) when the model is batch_first
        The series, of the model's dtype, padded to T steps; a Dask array is rechunked
        along the batch axis only.
    chunk : int >= 1, optional
        Series per task, rounded up to a multiple of 64 (so that every series keeps its
        place in BLAS's blocks of rows); None: as many as the model scores in about
        100 ms (timed on a probe of at most 256 series here).
    lengths : dask or numpy array of int, (B,), optional
        Each series' own number of steps, 1 <= lengths[b] <= T; steps beyond give 0.

    Returns
    -------
    y : dask array
        The model's output, (T, B, H) (or (B, T, H); (B, H) for a model ending in
        LastStep), in the input's order, chunked along the batch axis; ``.compute()`` gives
        the NumPy array. On the compiled backend its recurrent layers give the whole
        batch's bits for any chunking. What goes through BLAS (Linear's NumPy product;
        the numba and NumPy backends' products) equals it where BLAS rounds a row the
        same in products of any number of rows, which the chunks at multiples of 64
        rows keep for OpenBLAS's blocks; otherwise a series may differ in the last bit
        (float32 ~1e-7), never more.

    Raises
    ------
    ValueError, TypeError
        series not 3-D, lengths not one int in [1, T] per series, chunk not a positive
        int, model not a model, before any task runs.
    ImportError
        dask is not installed.

    Examples
    --------
    >>> import numpy as np, rnncore as rc, rnncore.dask as rdk
    >>> model = rc.GRU(2, 3, seed=0)
    >>> x = np.ones((5, 10, 2), dtype=np.float32)
    >>> y = rdk.score(model, x, chunk=4).compute()
    >>> y.shape, bool(np.array_equal(y, model.eval()(x)[0]))
    ((5, 10, 3), True)
    """
    da = _dask()
    scorer = _inference_copy(model)
    batch_axis = 0 if _batch_first(scorer) else 1
    series, lengths = _checked(series, lengths, batch_axis)
    chunk = _chunk_argument(chunk, scorer, series, lengths, batch_axis)
    sizes = _chunk_sizes(series.shape[batch_axis], chunk)
    chunks = tuple(sizes if axis == batch_axis else (series.shape[axis],) for axis in range(3))
    series = series.rechunk(chunks) if isinstance(series, da.Array) else da.from_array(series, chunks=chunks)
    if lengths is not None:
        lengths = lengths.rechunk((sizes,)) if isinstance(lengths, da.Array) else da.from_array(lengths, chunks=(sizes,))
    # the output's dtype and shape past the batch axis, from one series
    index = [slice(None)] * 3
    index[batch_axis] = slice(0, 1)
    sample = _run(scorer, np.asarray(series[tuple(index)]), None if lengths is None else np.asarray(lengths[:1]),
                  batch_axis)
    client = _client()
    shipped = client.scatter(scorer, broadcast=True) if client is not None else scorer
    # the input's axes (t)ime, (b)atch, (i)nput; the output keeps t and b, (o)utput for i
    in_index = "tbi" if batch_axis == 1 else "bti"
    out_index = in_index[:2] + "o" if sample.ndim == 3 else "bo"
    arguments = [series, in_index] + ([lengths, "b"] if lengths is not None else [])
    return da.blockwise(_block, out_index, *arguments, new_axes={"o": sample.shape[-1]}, concatenate=True,
                        dtype=sample.dtype, meta=np.empty((0,) * sample.ndim, dtype=sample.dtype), model=shipped,
                        batch_axis=batch_axis, has_lengths=lengths is not None)


def _block(block, *rest, model, batch_axis, has_lengths):
    return _run(model, block, rest[0] if has_lengths else None, batch_axis)


def score_local(model: Any, series: Any, workers: Optional[int] = None, chunk: Optional[int] = None,
                lengths: Any = None) -> np.ndarray:
    """The model's output for every series, computed here by a pool of threads
    (concurrent.futures), one chunk of series per task; the kernels release the GIL, so
    the chunks run at the same time. Set ``rnncore.set_num_threads(1)`` first when
    `workers` matches the cores, so that the kernels' own threads do not compete.

    Parameters
    ----------
    model : layer or Sequential
        As `score` takes it; an eval-mode copy is used.
    series : array_like, (T, B, I), or (B, T, I) when the model is batch_first
    workers : int >= 1, optional
        Threads; None: the CPUs this process may use.
    chunk : int >= 1, optional
        Series per task; None: about 100 ms of work, as `score`.
    lengths : array_like of int, (B,), optional

    Returns
    -------
    y : np.ndarray
        The model's output in the input's order, as `score` computes it.

    Raises
    ------
    ValueError, TypeError
        As `score`, and workers not a positive int.

    Examples
    --------
    >>> import numpy as np, rnncore as rc, rnncore.dask as rdk
    >>> model = rc.LSTM(2, 3, seed=0)
    >>> x = np.ones((5, 10, 2), dtype=np.float32)
    >>> rdk.score_local(model, x, workers=2, chunk=4).shape
    (5, 10, 3)
    """
    scorer = _inference_copy(model)
    batch_axis = 0 if _batch_first(scorer) else 1
    series = np.asarray(series)
    lengths = None if lengths is None else np.asarray(lengths)
    series, lengths = _checked(series, lengths, batch_axis)
    workers = len(os.sched_getaffinity(0)) if workers is None else validate.positive_int("workers", workers)
    chunk = _chunk_argument(chunk, scorer, series, lengths, batch_axis)
    bounds = np.cumsum((0,) + _chunk_sizes(series.shape[batch_axis], chunk))
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = series[start:stop] if batch_axis == 0 else series[:, start:stop]
        pieces.append((block, None if lengths is None else lengths[start:stop]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        outputs = list(pool.map(lambda piece: _run(scorer, piece[0], piece[1], batch_axis), pieces))
    return np.concatenate(outputs, axis=batch_axis if outputs[0].ndim == 3 else 0)
