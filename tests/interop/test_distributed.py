"""rnncore.distributed under a real MPI: jobs of 2 and 3 ranks on loopback (mpirun with
tests/interop/mpi_worker.py), compared with one process doing each whole global batch.
Skipped only where mpirun or mpi4py is missing; CI installs both."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnncore as rc

from cases import assert_examples_run
from mpi_worker import batch, build, gradients, train

WORKER = Path(__file__).with_name("mpi_worker.py")
MPIRUN = shutil.which("mpirun")
TIMEOUT = 90  # seconds a job may take: a hang fails the test instead of the suite

# CI sets RNNCORE_REQUIRE_MPI=1: there a missing MPI fails the tests instead of skipping them
needs_mpi = pytest.mark.skipif((MPIRUN is None or importlib.util.find_spec("mpi4py") is None)
                               and not os.environ.get("RNNCORE_REQUIRE_MPI"),
                               reason="needs mpirun (Open MPI or MPICH) and mpi4py")


def mpirun(n, scenario, out_dir, script=WORKER):
    """Run `script` (the worker) on `n` ranks; (the completed process, [each rank's results])."""
    command = [MPIRUN, "-n", str(n)]
    env = dict(os.environ)
    # the rnncore this test imports, for the ranks too (a checkout or an install)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(rc.__file__).parents[1]), env.get("PYTHONPATH", "")])
    version = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        # CI runs as root in a container: more ranks than cores, TCP over loopback only
        command += ["--allow-run-as-root", "--oversubscribe"]
        env.update(OMPI_MCA_btl="self,tcp", OMPI_MCA_btl_tcp_if_include="lo", OMPI_MCA_oob_tcp_if_include="lo")
    command += [sys.executable, str(script)] + ([scenario, str(out_dir)] if script == WORKER else scenario)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    ranks = [dict(np.load(out_dir / f"rank{r}.npz")) for r in range(n) if (out_dir / f"rank{r}.npz").exists()]
    return done, ranks


def succeeded(n, scenario, out_dir):
    done, ranks = mpirun(n, scenario, out_dir)
    assert done.returncode == 0 and len(ranks) == n, done.stdout + done.stderr
    return ranks


def relative_error(actual, expected):
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_averaged_gradients_are_those_of_the_whole_global_batch(n, tmp_path):
    ranks = succeeded(n, "grads", tmp_path)
    model = build(seed=0)  # rank 0's weights, which the broadcast gave every rank
    x, target = batch(0, 12)
    gradients(model, x, target)
    expected = {name: g.copy() for name, g in model.grads.items()}
    x, target = batch(1, 10)
    gradients(model, x, target)
    uneven = model.grads
    # float64: the ranks' partial sums and their mean round differently from one sum over
    # the batch, by a few ulps; 1e-12 relative catches any missing, doubled or unscaled shard
    for rank in ranks:
        for name in expected:
            for mode in ("fast", "exact"):
                assert relative_error(rank[f"{mode}/{name}"], expected[name]) < 1e-12, (mode, name)
            assert relative_error(rank[f"uneven/{name}"], uneven[name]) < 1e-12, name
    # every rank holds the very same gradients, and the shards cover the batch once
    for rank in ranks[1:]:
        for key in rank:
            if key != "rows":
                np.testing.assert_array_equal(rank[key], ranks[0][key])
    np.testing.assert_array_equal(np.concatenate([rank["rows"] for rank in ranks]), np.arange(10))


@needs_mpi
def test_exact_mode_is_bitwise_the_same_run_to_run(tmp_path):
    runs = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        runs.append(succeeded(3, "grads", tmp_path / run))
    first, second = runs
    for name in build().grads:
        np.testing.assert_array_equal(first[0][f"exact/{name}"], second[0][f"exact/{name}"])


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_training_gives_every_rank_the_single_process_parameters(n, tmp_path):
    ranks = succeeded(n, "train", tmp_path)
    model = build(seed=0)
    train(model, rc.optim.Adam(model, lr=1e-2), slice(None), steps=20)
    expected = model.state_dict()
    start = build(seed=0).state_dict()
    for name, value in expected.items():
        # the parameters moved, so equality below means the same 20 steps were taken
        assert np.max(np.abs(value - start[name])) > 1e-3, name
        for rank in ranks:
            np.testing.assert_array_equal(rank[name], ranks[0][name])
        # float64 rounding of the gradients' sums, carried through 20 Adam steps
        assert relative_error(ranks[0][name], value) < 1e-9, name


@needs_mpi
def test_a_rank_that_raises_aborts_the_job_with_its_message(tmp_path):
    done, ranks = mpirun(3, "raise", tmp_path)
    assert done.returncode != 0 and not ranks
    assert "rank 1 of 3 raised ValueError: deliberate failure on rank 1; aborting all ranks" in done.stderr


@needs_mpi
def test_checkpoint_from_rank_0_resumes_on_every_rank(tmp_path):
    ranks = succeeded(2, "checkpoint", tmp_path)
    for rank in ranks:
        for name in build().state_dict():
            np.testing.assert_array_equal(rank[f"loaded/{name}"], rank[f"saved/{name}"])
            # the optimizer's state came back too: resuming continues bit for bit
            np.testing.assert_array_equal(rank[f"resumed/{name}"], rank[f"straight/{name}"])
            np.testing.assert_array_equal(rank[f"resumed/{name}"], ranks[0][f"resumed/{name}"])


@needs_mpi
def test_the_example_trains_on_every_rank_and_rank_0_reports(tmp_path):
    example = Path(__file__).resolve().parents[2] / "examples" / "train_data_parallel.py"
    done, _ = mpirun(2, ["--steps", "3", "--checkpoint", str(tmp_path / "model.npz")], tmp_path, script=example)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("(2 ranks, 32 sequences each)") == 2  # steps 0 and 2, printed once
    assert rc.load(tmp_path / "model.npz").parameters()


# -- one process, no mpirun: the checks and the single-rank case ---------------------------
needs_mpi4py = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py")


@needs_mpi4py
def test_bad_arguments_are_refused_before_any_communication():
    import rnncore.distributed as rd

    with pytest.raises(TypeError, match="model: expected a model with parameters"):
        rd.DataParallel(object())
    with pytest.raises(ValueError, match="mode: expected one of"):
        rd.DataParallel(build(), mode="quick")
    with pytest.raises(TypeError, match="comm: expected an mpi4py intracommunicator"):
        rd.DataParallel(build(), comm="world")
    dp = rd.DataParallel(build())
    before = {n: g.copy() for n, g in dp.grads.items()}
    for count in (-1, 1.5, True):
        with pytest.raises(ValueError, match="count: expected an int >= 0"):
            dp.allreduce_gradients(count=count)
    with pytest.raises(ValueError, match="count: expected a positive count"):
        dp.allreduce_gradients(count=0)
    with pytest.raises(ValueError, match=r"root: expected a rank in \[0, 1\)"):
        dp.broadcast_parameters(root=1)
    with pytest.raises(ValueError, match="n_items"):
        rd.shard(0)
    for name, g in dp.grads.items():
        np.testing.assert_array_equal(g, before[name])


@needs_mpi4py
def test_one_rank_is_the_plain_model():
    import rnncore.distributed as rd

    model, plain = build(), build()
    dp = rd.DataParallel(model)
    train(dp, rc.optim.Adam(model, lr=1e-2), rd.shard(12), steps=4)
    train(plain, rc.optim.Adam(plain, lr=1e-2), slice(None), steps=4)
    for name, value in plain.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value)


@needs_mpi4py
def test_documented_examples_run():
    import rnncore.distributed as rd
    assert_examples_run(rd)


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    import rnncore.distributed as rd

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `from mpi4py import MPI` fail
    with pytest.raises(ImportError, match="pip install mpi4py"):
        rd.shard(4)
