"""Checkpoints: bit-exact round trips of every layer and cell, options, optimizer state and
registered models; crashes mid-save; and every kind of bad file."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import rnncore as rc
from rnncore.checkpoint import CheckpointError
from cases import assert_same_state, assert_same_tree


OBJECTS = {
    "rnn-relu-bidirectional": lambda: rc.RNN(3, 5, num_layers=2, nonlinearity="relu", bidirectional=True,
                                             batch_first=True, dropout=0.25, seed=1),
    "lstm-everything-float64": lambda: rc.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, peephole=True,
                                               coupled_input_forget=True, dtype=np.float64, seed=2),
    "gru-reset-before-no-bias": lambda: rc.GRU(3, 4, bias=False, reset_after=False, seed=3),
    "jordan": lambda: rc.JordanRNN(3, 5, 2, nonlinearity="relu", output_activation="sigmoid", seed=4),
    "rnn-cell": lambda: rc.RNNCell(3, 4, nonlinearity="relu", dtype=np.float64, seed=5),
    "lstm-cell": lambda: rc.LSTMCell(3, 4, peephole=True, seed=6),
    "gru-cell": lambda: rc.GRUCell(3, 4, reset_after=False, seed=7),
    "linear": lambda: rc.Linear(3, 2, bias=False, dtype=np.float64, seed=8),
    "embedding": lambda: rc.Embedding(10, 3, seed=9),
    "last-step": lambda: rc.LastStep(batch_first=True),
}


@pytest.mark.parametrize("kind", OBJECTS)
def test_round_trip_is_bit_exact(tmp_path, kind):
    obj = OBJECTS[kind]()
    obj.eval()
    path = tmp_path / "model.ckpt"
    rc.save(path, obj)
    assert os.listdir(tmp_path) == ["model.ckpt"]  # no temporary file left behind
    loaded = rc.load(path)
    assert type(loaded) is type(obj)
    assert loaded.get_config() == obj.get_config()
    assert loaded.training is False
    assert_same_state(loaded, obj)
    if not hasattr(obj, "hidden_size"):
        return  # the toolkit's modules: state and configuration are all there is
    x = np.random.default_rng(0).standard_normal((4, 2, 3) if hasattr(obj, "num_layers") else (2, 3))
    x = x.astype(obj.dtype)
    out, again = obj(x), loaded(x)
    for a, b in zip(np.atleast_1d(out[0] if isinstance(out, tuple) else out),
                    np.atleast_1d(again[0] if isinstance(again, tuple) else again)):
        np.testing.assert_array_equal(a, b)


class StandInOptimizer:
    """The optimizer interface checkpoints rely on: state_dict()/load_state_dict() with a
    nested dict of arrays and scalars."""

    def __init__(self, params):
        self.state = {"lr": 1e-3, "betas": (0.9, 0.999), "step": 0, "amsgrad": False, "name": "adam",
                      "eps": np.float32(1e-8), "schedule": None,
                      "moments": {name: [np.zeros_like(v), np.zeros_like(v)] for name, v in params.items()},
                      0: {"momentum_buffer": np.arange(3, dtype=np.int64)}}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def test_optimizer_state_round_trip(tmp_path):
    layer = rc.LSTM(3, 4, seed=0)
    optimizer = StandInOptimizer(layer.parameters())
    rng = np.random.default_rng(1)
    for moments in optimizer.state["moments"].values():
        for m in moments:
            m[...] = rng.standard_normal(m.shape)
    optimizer.state["step"] = 17
    path = tmp_path / "train.ckpt"
    rc.save(path, layer, optimizer=optimizer)

    fresh = StandInOptimizer(layer.parameters())
    loaded = rc.load(path, optimizer=fresh)
    assert_same_state(loaded, layer)
    assert_same_tree(fresh.state, optimizer.state)
    obj, state, header = rc.checkpoint.read(path)
    assert_same_tree(state, optimizer.state)
    assert header["format_version"] == rc.checkpoint.FORMAT_VERSION and header["class"] == "LSTM"

    rc.save(path, layer)
    assert rc.checkpoint.read(path).optimizer_state is None
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        rc.load(path, optimizer=fresh)
    with pytest.raises(TypeError, match=r"optimizer state \['moments'\]\[0\] is a set"):
        rc.save(path, layer, optimizer={"moments": [{1, 2}]})


# -- models registered by name -------------------------------------------------------------

@rc.checkpoint.register(name="test_checkpoint.Forecaster")
class Forecaster:
    """A model of the toolkit's shape: a recurrent layer and a linear head, rebuilt from
    nested configuration by from_config."""

    def __init__(self, lstm, head_out):
        self.lstm = lstm
        self.head = np.zeros((head_out, lstm.hidden_size), dtype=lstm.dtype)

    @classmethod
    def from_config(cls, config):
        return cls(rc.LSTM(**config["lstm"]), config["head_out"])

    def get_config(self):
        return {"lstm": self.lstm.get_config(), "head_out": self.head.shape[0]}

    def state_dict(self):
        return {**{f"lstm.{k}": v for k, v in self.lstm.state_dict().items()}, "head": self.head.copy()}

    def load_state_dict(self, mapping):
        self.lstm.load_state_dict({k[5:]: v for k, v in mapping.items() if k.startswith("lstm.")})
        self.head[...] = mapping["head"]


def test_registered_model_round_trip(tmp_path):
    model = Forecaster(rc.LSTM(3, 4, num_layers=2, seed=0), 2)
    model.head[...] = np.random.default_rng(0).standard_normal(model.head.shape)
    rc.save(tmp_path / "m.ckpt", model)
    loaded = rc.load(tmp_path / "m.ckpt")
    assert isinstance(loaded, Forecaster) and loaded.get_config() == model.get_config()
    assert_same_state(loaded, model)


def test_registry_refusals(tmp_path):
    class Unregistered(Forecaster):
        pass

    path = tmp_path / "m.ckpt"
    with pytest.raises(TypeError, match="Unregistered is not a registered checkpoint class"):
        rc.save(path, Unregistered(rc.LSTM(3, 4), 1))
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="'LSTM' is already taken"):
        rc.checkpoint.register(Unregistered, name="LSTM")
    with pytest.raises(TypeError, match=r"lacks \['state_dict', 'load_state_dict', 'get_config'\]"):
        rc.checkpoint.register(object)


def test_unregister_withdraws_a_name_and_frees_it(tmp_path):
    class Scale(Forecaster):
        pass

    before = rc.checkpoint.registered()
    rc.checkpoint.register(Scale, name="test_checkpoint.Scale")
    path = tmp_path / "m.ckpt"
    rc.save(path, Scale(rc.LSTM(3, 4), 1))
    assert rc.checkpoint.unregister("test_checkpoint.Scale") is Scale
    assert rc.checkpoint.registered() == before
    with pytest.raises(CheckpointError, match="'test_checkpoint.Scale', which is not a registered"):
        rc.load(path)

    class Scale(Forecaster):  # defined again, as a re-run notebook cell does
        pass

    rc.checkpoint.register(Scale, name="test_checkpoint.Scale")
    try:
        assert isinstance(rc.load(path), Scale)
    finally:
        rc.checkpoint.unregister("test_checkpoint.Scale")
    for name in ("test_checkpoint.Scale", "lstm", 3):
        with pytest.raises(KeyError, match=f"unregister: expected a registered name, got {name!r}"):
            rc.checkpoint.unregister(name)
    assert rc.checkpoint.registered() == before


# -- bad files -------------------------------------------------------------------------------

def members_of(path):
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def write_members(path, members):
    with open(path, "wb") as file:
        np.savez(file, **members)


def rewrite_header(path, **changes):
    members = members_of(path)
    header = json.loads(members["header"].tobytes())
    header.update(changes)
    members["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    write_members(path, members)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.ckpt"
    rc.save(path, rc.GRU(3, 4, num_layers=2, seed=0))
    return path


def test_truncated_files_are_refused(saved):
    data = saved.read_bytes()
    for size in (0, 3, 30, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1):
        saved.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="not a zip archive|truncated, corrupt"):
            rc.load(saved)


def test_damaged_bytes_are_refused_or_harmless(saved):
    reference = rc.load(saved)
    data = saved.read_bytes()
    rng = np.random.default_rng(0)
    refused = 0
    for position in rng.choice(len(data), 60, replace=False):
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        saved.write_bytes(bytes(damaged))
        try:
            loaded = rc.load(saved)
        except CheckpointError:
            refused += 1
            continue
        # bytes the format does not read (a zip timestamp, say) may change; the model may not
        assert_same_state(loaded, reference)
    assert refused > 40  # nearly every byte is array data or structure, covered by CRC-32


def test_garbage_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="not a zip archive"):
        rc.load(path)
    np.save(path, np.arange(3))
    with pytest.raises(CheckpointError, match="not a zip archive"):
        rc.load(path)
    write_members(path, {"weights": np.ones(3)})
    with pytest.raises(CheckpointError, match="it has no header"):
        rc.load(path)
    write_members(path, {"header": np.frombuffer(b'{"format": "other"}', np.uint8)})
    with pytest.raises(CheckpointError, match="names no 'rnncore.checkpoint' format"):
        rc.load(path)
    with pytest.raises(FileNotFoundError):
        rc.load(tmp_path / "missing.ckpt")


def test_pickles_are_never_executed(saved):
    members = members_of(saved)
    members["state/weight_ih_l0"] = np.array([print], dtype=object)
    write_members(saved, members)
    with pytest.raises(CheckpointError, match="not written by rnncore .*Object arrays cannot be loaded "
                                              "when allow_pickle=False"):
        rc.load(saved)


@pytest.mark.parametrize("changes,match", [
    (dict(format_version=3, rnncore_version="9.0"), r"format version 3 \(written by rnncore 9.0\); this rnncore reads "
                                                    r"format versions up to 2: upgrade rnncore"),
    (dict(generators={"7.": {"bit_generator": "PCG64"}}), r"generator states for \['7.'\], which its model has no"),
    (dict(generators={"": {"bit_generator": "MT19937"}}), "the generator at '': expected a PCG64 state"),
    (dict(generators={"": {"bit_generator": "PCG64", "state": {"state": -1, "inc": "x"}}}),
     "the generator at '' has an invalid state"),
    (dict(generators=[]), "'generators': expected an object of generator states"),
    (dict(format_version="1"), "invalid format_version '1'"),
    (dict(**{"class": "subprocess.Popen"}), "'subprocess.Popen', which is not a registered checkpoint class"),
    (dict(config={"input_size": 3, "hidden_size": 5, "num_layers": 2}),
     r"arrays do not fit a GRU.*expected float32\(15, 3\)"),
    (dict(config={"input_size": 3, "hidden_size": 4, "colour": "red"}), "configuration does not build a GRU"),
    (dict(state=["weight_ih_l0", "weight_ih_l9"]), "lacks the array 'weight_ih_l9'"),
    (dict(optimizer={"array": "optimizer/7"}), "optimizer state that does not match its arrays"),
])
def test_inconsistent_headers_are_refused(saved, changes, match):
    rewrite_header(saved, **changes)
    with pytest.raises(CheckpointError, match=match):
        rc.load(saved)


def test_an_unavailable_backend_falls_back_with_a_warning(saved):
    rewrite_header(saved, config={**rc.GRU(3, 4, num_layers=2).get_config(), "backend": "cuda-someday"})
    with pytest.warns(RuntimeWarning, match="backend='cuda-someday', which is not available here"):
        assert rc.load(saved).get_config()["backend"] is None


# -- a crash mid-save never loses the previous checkpoint ----------------------------------

SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    import rnncore as rc
    path = sys.argv[1]
    layer = rc.LSTM(64, 256, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    versions = [layer.state_dict(), {k: v + 1 for k, v in layer.state_dict().items()}]
    print("saving", flush=True)
    n = 0
    while True:
        layer.load_state_dict(versions[n % 2])
        rc.save(path, layer)
        n += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killing_a_saver_mid_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    # an 18 MB model: a save takes tens of milliseconds, so random kills land mid-write
    layer = rc.LSTM(64, 256, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    versions = [layer.state_dict(), {k: v + 1 for k, v in layer.state_dict().items()}]
    rc.save(path, layer)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    rng = np.random.default_rng(0)
    for trial in range(6):
        saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, env=env)
        try:
            assert saver.stdout.readline() == b"saving\n"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            saver.send_signal(signal.SIGKILL)
            saver.wait()
            saver.stdout.close()
        loaded = rc.load(path).state_dict()
        matches = [all(np.array_equal(loaded[k], v[k]) for k in v) for v in versions]
        assert any(matches), f"trial {trial}: the checkpoint holds neither complete version"
    # a kill mid-write leaves its temporary file behind, never the target half-written
    assert all(name.startswith(".model.ckpt.") and name.endswith(".rnncore-tmp")
               for name in os.listdir(tmp_path) if name != "model.ckpt")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_checkpoint_gets_the_mode_a_plain_open_gives(tmp_path):
    umask = os.umask(0o022)
    try:
        rc.save(tmp_path / "model.ckpt", rc.GRU(3, 4))
    finally:
        os.umask(umask)
    assert (tmp_path / "model.ckpt").stat().st_mode & 0o777 == 0o644


def test_a_loaded_model_draws_the_masks_the_saved_one_would_have_drawn(tmp_path):
    """The generators of the model and of the modules inside it are saved: training
    resumes with the same dropout and zoneout masks as if it had never stopped."""
    model = rc.Sequential(rc.LSTM(3, 4, num_layers=2, dropout=0.5, zoneout=0.3, weight_dropout=0.2, seed=1),
                          rc.Linear(4, 2, seed=2))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    model(x)
    rc.save(tmp_path / "m.ckpt", model)
    loaded = rc.load(tmp_path / "m.ckpt")
    np.testing.assert_array_equal(loaded(x)[0], model(x)[0])


def test_a_version_1_file_without_generators_still_loads(saved):
    members = members_of(saved)
    header = json.loads(members["header"].tobytes())
    header["format_version"] = 1
    del header["generators"]
    members["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    write_members(saved, members)
    assert rc.load(saved).specs[0].hidden_size == 4
    header["format_version"] = 2
    members["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    write_members(saved, members)
    with pytest.raises(CheckpointError, match="lacks the entries \\['generators'\\]"):
        rc.load(saved)
