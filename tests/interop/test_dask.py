"""rnncore.dask: scoring on a real 2-worker distributed.LocalCluster (separate processes,
loopback) and on local threads, bit for bit against one call on the whole batch."""
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rnncore as rc

from cases import assert_examples_run

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask.array")
import rnncore.dask as rdk  # noqa: E402  (after the skips: it needs dask)

N_SERIES, T = 10_000, 12


def mixed(dtype, batch_first=False, seed=0):
    """10,000 short series of 1 to T steps, padded to T, and their lengths."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N_SERIES, 2)).astype(dtype)
    return (x.transpose(1, 0, 2).copy() if batch_first else x), rng.integers(1, T + 1, N_SERIES)


def models():
    # one layer or one direction: the kernels compute each row as in any other batch
    return [rc.Sequential(rc.LSTM(2, 8, dtype=np.float64, seed=0), rc.Linear(8, 1, dtype=np.float64, seed=1)),
            rc.GRU(2, 6, batch_first=True, seed=2),
            rc.Sequential(rc.GRU(2, 5, num_layers=2, seed=3), rc.LastStep(), rc.Linear(5, 3, seed=4))]


def whole(model, x, lengths):
    return model.eval()(x, lengths=lengths)[0]


def test_score_without_a_cluster_runs_on_dask_threads_and_leaves_the_model_alone():
    # first in the file: the cluster of the tests below, once started, is the active client
    assert rdk._client() is None
    model = models()[0]
    before = model.state_dict()
    model.train()
    x, lengths = mixed(np.float64)
    y = rdk.score(model, x[:, :300], chunk=64, lengths=lengths[:300]).compute(scheduler="threads")
    assert model.training
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    np.testing.assert_array_equal(y, whole(model, x[:, :300], lengths[:300]))


@pytest.fixture(scope="module")
def client():
    # the workers are new processes: they import the rnncore this test imports
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(rc.__file__).parents[1]), saved or ""])
    try:
        with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            yield client
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.mark.parametrize("which", range(3))
def test_score_on_a_cluster_is_the_whole_batch_bit_for_bit(client, which):
    model = models()[which]
    x, lengths = mixed(model.modules[0].dtype if hasattr(model, "modules") else model.dtype,
                       batch_first=rdk._batch_first(model))
    y = rdk.score(model, x, chunk=1500, lengths=lengths)
    assert y.numblocks[1 if y.ndim == 3 and not rdk._batch_first(model) else 0] == 7  # tasks spread over both
    np.testing.assert_array_equal(y.compute(), whole(model, x, lengths))


def test_the_model_is_scattered_once_to_every_worker(client):
    model = models()[0]
    x, lengths = mixed(np.float64)
    y = rdk.score(model, x, chunk=2000, lengths=lengths)
    # one key names the model in every task, held by both workers before any task runs
    shared = {key for key, holders in client.who_has().items() if len(holders) == 2}
    assert len(shared) == 1
    np.testing.assert_array_equal(y.compute(), whole(model, x, lengths))


def test_a_worker_killed_mid_run_is_recovered_without_wrong_or_missing_results(client):
    model = rc.Sequential(rc.LSTM(2, 48, dtype=np.float64, seed=5), rc.Linear(48, 1, dtype=np.float64, seed=6))
    x, lengths = mixed(np.float64, seed=1)
    expected = whole(model, x, lengths)
    y = client.persist(rdk.score(model, x, chunk=250, lengths=lengths))
    tasks = distributed.futures_of(y)
    next(distributed.as_completed(tasks))  # the run is under way
    victim, pid = next(iter(client.run(os.getpid).items()))
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    got = y.compute()
    assert time.monotonic() - started < 60
    np.testing.assert_array_equal(got, expected)
    assert victim not in client.scheduler_info()["workers"] or len(client.scheduler_info()["workers"]) == 2


@pytest.mark.parametrize("which", range(3))
def test_score_local_is_the_whole_batch_bit_for_bit(which):
    model = models()[which]
    x, lengths = mixed(model.modules[0].dtype if hasattr(model, "modules") else model.dtype,
                       batch_first=rdk._batch_first(model))
    np.testing.assert_array_equal(rdk.score_local(model, x, workers=2, chunk=999, lengths=lengths),
                                  whole(model, x, lengths))
    # the default chunks (about 100 ms each) too, and without a cluster dask's threads
    np.testing.assert_array_equal(rdk.score_local(model, x, lengths=lengths), whole(model, x, lengths))


def test_bad_input_is_refused_before_any_task():
    model = rc.GRU(2, 3, seed=0)
    x = np.zeros((4, 5, 2), dtype=np.float32)
    for call in (rdk.score, rdk.score_local):
        with pytest.raises(ValueError, match="series: expected a 3-D array"):
            call(model, x[0])
        with pytest.raises(ValueError, match="lengths: expected a 1-D array of 5 ints"):
            call(model, x, lengths=np.ones(4, dtype=int))
        with pytest.raises(ValueError, match=r"lengths: expected values in \[1, 4\]"):
            call(model, x, lengths=np.array([1, 2, 5, 1, 1]))
        with pytest.raises(TypeError, match="lengths: expected ints"):
            call(model, x, lengths=np.ones(5))
        with pytest.raises(ValueError, match="chunk"):
            call(model, x, chunk=0)
        with pytest.raises(TypeError, match="model: expected an rnncore model"):
            call(object(), x)
        with pytest.raises(ValueError, match="series: expected at least one series"):
            call(model, x[:, :0])
    with pytest.raises(ValueError, match="workers"):
        rdk.score_local(model, x, workers=0)
    with pytest.raises(TypeError, match="x"):  # the model's own check of the dtype
        rdk.score(model, x.astype(np.float64))


def test_documented_examples_run():
    assert_examples_run(rdk)


def test_without_dask_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match="pip install 'dask\\[array\\]' distributed"):
        rdk.score(rc.GRU(2, 3, seed=0), np.zeros((4, 5, 2), dtype=np.float32))
