"""Checkpoints under stress: an optimizer restored by rc.load steps the model it returns;
untrusted files are refused before they cost memory or time (forged headers, forged .npy
headers, zip bombs, mistyped header entries); saving writes through symbolic links,
refuses special files, and cleans up after killed saves without disturbing live ones."""
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib

import numpy as np
import pytest

import rnncore as rc
from rnncore.checkpoint import CheckpointError
from cases import assert_same_state, assert_same_tree

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


# -- item: rc.load(path, optimizer=opt) resumes training of the returned model ---------------

def lstm_layer(seed):
    return rc.LSTM(3, 5, num_layers=2, dtype=np.float64, seed=seed)


def lstm_last_linear(seed):
    return rc.Sequential(rc.LSTM(3, 5, dtype=np.float64, seed=seed), rc.LastStep(),
                         rc.Linear(5, 2, dtype=np.float64, seed=seed + 1))


# model, and the shape of its targets for x of shape (6, 4, 3)
MODELS = {"lstm": (lstm_layer, (6, 4, 5)), "lstm-laststep-linear": (lstm_last_linear, (4, 2))}
OPTIMIZERS = {"sgd-momentum": lambda m: rc.optim.SGD(m, lr=0.05, momentum=0.9),
              "adam": lambda m: rc.optim.Adam(m, lr=0.02)}


def manual_steps(model, optimizer, data):
    losses, loss_fn = [], rc.MSELoss()
    for x, target in data:
        model.train()
        model.zero_grad()
        y, _ = model(x)
        losses.append(loss_fn(y, target))
        model.backward(loss_fn.backward())
        optimizer.step()
    return losses


def train_steps(model, optimizer, data):
    return [rc.train.train_step(model, rc.MSELoss(), optimizer, x, target)[0] for x, target in data]


def bptt_steps(model, optimizer, data):
    return [rc.train.truncated_bptt(model, rc.MSELoss(), optimizer, x, target, chunk=2)[0] for x, target in data]


STEPPERS = {"manual": manual_steps, "train_step": train_steps, "truncated_bptt": bptt_steps}
# truncated BPTT needs a target per step, which a LastStep model does not give
COMBINATIONS = [(m, s) for m in MODELS for s in STEPPERS if not (m != "lstm" and s == "truncated_bptt")]


def batches(target_shape, count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 4, 3)), rng.standard_normal(target_shape)) for _ in range(count)]


@pytest.mark.parametrize("optimizer_kind", OPTIMIZERS)
@pytest.mark.parametrize("model_kind,stepper", COMBINATIONS)
def test_an_optimizer_restored_by_load_steps_the_returned_model_bit_for_bit(tmp_path, model_kind, stepper,
                                                                           optimizer_kind):
    make, target_shape = MODELS[model_kind]
    make_optimizer, steps = OPTIMIZERS[optimizer_kind], STEPPERS[stepper]
    before, after = batches(target_shape, 3, seed=1), batches(target_shape, 3, seed=2)
    model = make(0)
    optimizer = make_optimizer(model)
    steps(model, optimizer, before)
    path = tmp_path / "train.ckpt"
    rc.save(path, model, optimizer=optimizer)

    placeholder = make(10)  # what a resuming script builds before it knows the weights
    placeholder_state = placeholder.state_dict()
    resumed_optimizer = make_optimizer(placeholder)
    resumed = rc.load(path, optimizer=resumed_optimizer)

    losses = steps(model, optimizer, after)
    assert steps(resumed, resumed_optimizer, after) == losses
    assert_same_state(resumed, model)
    assert_same_tree(resumed_optimizer.state_dict(), optimizer.state_dict())
    # the optimizer has left the placeholder alone
    assert_same_tree(placeholder.state_dict(), placeholder_state)


def stepped(model, optimizer):
    """The optimizer after one step from unit gradients, so that it has state."""
    for grad in model.grads.values():
        grad[...] = 1.0
    optimizer.step()
    return optimizer


def test_rebind_moves_the_optimizer_with_its_state_and_refuses_another_structure():
    model, twin = lstm_layer(0), lstm_layer(1)
    optimizer = stepped(model, rc.optim.Adam(model, lr=0.01))
    state = optimizer.state_dict()
    assert optimizer.rebind(twin) is optimizer
    assert_same_tree(optimizer.state_dict(), state)
    twin_before, model_before = twin.state_dict(), model.state_dict()
    stepped(twin, optimizer)
    assert not np.array_equal(twin.parameters()["weight_hh_l0"], twin_before["weight_hh_l0"])
    assert_same_tree(model.state_dict(), model_before)

    others = {
        "names": (rc.LSTM(3, 5, num_layers=1, dtype=np.float64),
                  r"parameters missing \['weight_ih_l1', 'weight_hh_l1', 'bias_ih_l1', 'bias_hh_l1'\]"),
        "shapes": (rc.LSTM(3, 6, num_layers=2, dtype=np.float64),
                   r"weight_ih_l0: expected float64\(20, 3\), got float64\(24, 3\)"),
        "dtypes": (rc.LSTM(3, 5, num_layers=2, dtype=np.float32),
                   r"weight_ih_l0: expected float64\(20, 3\), got float32\(20, 3\)"),
        "extra-module": ([twin, rc.Linear(5, 2)], r"parameters missing \['weight_ih_l0'.*unexpected parameters "
                                                  r"\['0.weight_ih_l0'"),
    }
    state = optimizer.state_dict()
    for other, message in others.values():
        with pytest.raises(ValueError, match=r"Adam.rebind: modules: expected parameters of the names, shapes and "
                                             r"dtypes of those it steps, got .*" + message):
            optimizer.rebind(other)
    # refused: still bound to twin, state untouched
    assert_same_tree(optimizer.state_dict(), state)
    changed = twin.state_dict()
    optimizer.step()
    assert not np.array_equal(twin.parameters()["weight_hh_l0"], changed["weight_hh_l0"])
    with pytest.raises(TypeError, match=r"modules\[0\]: expected an object with parameters\(\) and grads"):
        optimizer.rebind(object())


def test_a_load_that_does_not_fit_the_optimizer_leaves_it_bound_and_unchanged(tmp_path):
    path = tmp_path / "train.ckpt"
    saved = lstm_layer(0)
    rc.save(path, saved, optimizer=stepped(saved, rc.optim.SGD(saved, lr=0.1, momentum=0.9)))
    cases = {
        # another structure: refused by rebind, before the state is loaded
        "structure": (rc.optim.SGD, rc.LSTM(3, 4, num_layers=2, dtype=np.float64, seed=3), ValueError,
                      r"SGD.rebind: modules: .*weight_ih_l0: expected float64\(16, 3\), got float64\(20, 3\)"),
        # the same structure, another optimizer: refused by load_state_dict, after rebind
        "type": (rc.optim.Adam, lstm_layer(3), ValueError, "of a 'SGD' optimizer, not a 'Adam'"),
    }
    for make_optimizer, model, error, message in cases.values():
        optimizer = stepped(model, make_optimizer(model, lr=0.01))
        state, weights = optimizer.state_dict(), model.state_dict()
        with pytest.raises(error, match=message):
            rc.load(path, optimizer=optimizer)
        assert_same_tree(optimizer.state_dict(), state)
        optimizer.step()  # still steps the model it was built over
        assert not np.array_equal(model.parameters()["weight_ih_l0"], weights["weight_ih_l0"])


@rc.checkpoint.register(name="test_checkpoint_reliability.Frozen")
class Frozen:
    """A registered model without gradients, which no optimizer can step."""

    def __init__(self, size):
        self.weight = np.zeros(size)

    def get_config(self):
        return {"size": len(self.weight)}

    def state_dict(self):
        return {"weight": self.weight.copy()}

    def load_state_dict(self, mapping):
        self.weight[...] = mapping["weight"]


def test_loading_a_model_no_optimizer_can_step_with_an_optimizer_is_refused(tmp_path):
    path = tmp_path / "frozen.ckpt"
    layer = lstm_layer(0)
    optimizer = stepped(layer, rc.optim.SGD(layer, lr=0.1, momentum=0.9))
    rc.save(path, Frozen(3), optimizer=optimizer)
    state = optimizer.state_dict()
    with pytest.raises(TypeError, match=r"rnncore.load: optimizer: it cannot step the Frozen that .* \(modules\[0\]: "
                                        r"expected an object with parameters\(\) and grads, got Frozen\)"):
        rc.load(path, optimizer=optimizer)
    assert_same_tree(optimizer.state_dict(), state)


# -- item: untrusted files are refused before they cost memory or time -----------------------

PROBE = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    import rnncore as rc
    path = sys.argv[1]
    rc.load(sys.argv[2])  # a valid file: warms every code path the load takes
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    try:
        rc.load(path)
        outcome = "loaded"
    except rc.checkpoint.CheckpointError as exc:
        outcome = "CheckpointError: " + str(exc)
    except BaseException as exc:
        outcome = type(exc).__name__ + ": " + str(exc)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    # ru_maxrss: KiB on Linux, bytes on macOS
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * (1 if sys.platform == "darwin" else 1024)
    print(json.dumps({"outcome": outcome, "seconds": seconds, "extra_mb": max(rss, traced) / 2**20}))
""")


def probe(path, valid):
    """rc.load(path) in a fresh process: its outcome, seconds and the peak memory beyond
    what loading the small valid file took (the most of the traced allocations and the
    growth of the resident set)."""
    pytest.importorskip("resource")  # POSIX
    done = subprocess.run([sys.executable, "-c", PROBE, str(path), str(valid)], capture_output=True, env=ENV,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().splitlines()[-1])


def assert_refused_cheaply(path, valid, match):
    result = probe(path, valid)
    assert result["outcome"].startswith("CheckpointError: "), result
    assert match in result["outcome"], result
    assert result["seconds"] < 1.0, result
    assert result["extra_mb"] < 200, result


def entries_of(path):
    """[(name, bytes)] of every member of a zip, in order."""
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def write_zip(path, entries):
    """A zip written by hand from (name, bytes) entries, stored, or (name, raw deflate stream,
    uncompressed size, crc32) entries, deflated: so that a member can carry a precomputed
    stream (deflating a gigabyte would take seconds) and any sizes it claims."""
    local, central = bytearray(), bytearray()
    for entry in entries:
        name, data = entry[0].encode(), entry[1]
        method, size, crc = (8, entry[2], entry[3]) if len(entry) == 4 else (0, len(data), zlib.crc32(data))
        fields = (method, 0, 0x21, crc, len(data), size, len(name))
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, *fields, 0, 0, 0, 0, 0, len(local)) + name
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, *fields, 0) + name + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))


def npy_bytes(array=None, shape=None, dtype=None, data=b""):
    """An .npy file's bytes: of `array`, or a header declaring `shape` and `dtype` over `data`."""
    buffer = io.BytesIO()
    if array is not None:
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": tuple(shape)})
    return buffer.getvalue() + data


def array_of(npy):
    return np.load(io.BytesIO(npy), allow_pickle=False)


def header_of(entries):
    return json.loads(array_of(dict(entries)["header.npy"]).tobytes())


def with_header(entries, header):
    text = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    return [(name, npy_bytes(text) if name == "header.npy" else data) for name, data in entries]


@pytest.fixture
def valid(tmp_path):
    path = tmp_path / "valid.ckpt"
    model = rc.GRU(3, 4, num_layers=2, seed=0)
    rc.save(path, model, optimizer=stepped(model, rc.optim.Adam(model, lr=0.01)))
    return path


def optimizer_member(entries):
    """The name of the first optimizer array in a checkpoint's members."""
    return next(name for name, _ in entries if name.startswith("optimizer/"))


def edit_config(header, key, value):
    header["config"][key] = value
    return header


@pytest.mark.parametrize("key,value", [("hidden_size", 10**6), ("num_layers", 10**6), ("input_size", 10**9)])
def test_a_header_claiming_a_huge_model_is_refused_fast_and_small(tmp_path, valid, key, value):
    entries = entries_of(valid)
    forged = tmp_path / "forged.ckpt"
    write_zip(forged, with_header(entries, edit_config(header_of(entries), key, value)))
    assert forged.stat().st_size < 16_000
    assert_refused_cheaply(forged, valid, "its configuration asks for far more than its arrays hold")


def test_a_sequential_claiming_a_huge_module_is_refused_fast_and_small(tmp_path, valid):
    path = tmp_path / "model.ckpt"
    rc.save(path, rc.Sequential(rc.Embedding(7, 3, seed=0), rc.GRU(3, 4, seed=1), rc.LastStep(),
                                rc.Linear(4, 2, seed=2)))
    entries = entries_of(path)
    header = header_of(entries)
    header["config"]["modules"][3]["config"]["out_features"] = 2 * 10**7
    write_zip(path, with_header(entries, header))
    assert_refused_cheaply(path, valid, "its configuration asks for far more than its arrays hold")


GIB = 1 << 30


def zip_bomb(nbytes):
    """(raw deflate stream, size, crc32) of an .npy member of `nbytes` of float64 zeros,
    whole MiBs, deflated about 1000 to 1. Built from one deflated MiB, repeated: after a
    full flush deflate starts afresh, so every MiB of zeros deflates to the same bytes."""
    header = npy_bytes(shape=(nbytes // 8,), dtype=np.float64)
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    start = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = start + block * (nbytes >> 20) + compressor.flush()
    crc = zlib.crc32(header)
    for _ in range(nbytes >> 20):
        crc = zlib.crc32(zeros, crc)
    assert zlib.decompressobj(-15).decompress(stream, 1 << 20)[:len(header)] == header
    return stream, len(header) + nbytes, crc


@pytest.fixture(scope="module")
def bomb():
    return zip_bomb(GIB)


@pytest.mark.parametrize("where", ["unnamed", "state", "optimizer"])
def test_a_zip_bomb_member_is_refused_unread(tmp_path, valid, bomb, where):
    entries = entries_of(valid)
    name = {"unnamed": "extra.npy", "state": "state/weight_hh_l0.npy", "optimizer": optimizer_member(entries)}[where]
    forged = [entry for entry in entries if entry[0] != name] + [(name, *bomb)]
    path = tmp_path / "bomb.ckpt"
    write_zip(path, forged)
    assert path.stat().st_size < 2 << 20
    match = (f"its member {name!r} is compressed" if where != "unnamed"
             else "holds members that its header does not name (['extra.npy'])")
    assert_refused_cheaply(path, valid, match)


def test_compressed_members_are_refused_and_unnamed_ones_never_read(tmp_path, valid):
    # np.savez_compressed of a valid checkpoint's arrays: every member deflated
    path = tmp_path / "compressed.ckpt"
    with np.load(valid) as archive, open(path, "wb") as file:
        np.savez_compressed(file, **{key: archive[key] for key in archive.files})
    with pytest.raises(CheckpointError, match="is compressed or encrypted; rnncore checkpoints store every member "
                                              "uncompressed"):
        rc.load(path)
    # an unnamed member whose bytes are garbage is refused for what it is, never read
    write_zip(path, entries_of(valid) + [("notes.npy", b"\xff" * 100)])
    with pytest.raises(CheckpointError, match=r"holds members that its header does not name \(\['notes.npy'\]\)"):
        rc.load(path)


@pytest.mark.parametrize("member,shape", [("state/weight_hh_l0.npy", (10**12,)),
                                          ("state/weight_hh_l0.npy", (GIB // 4,)),
                                          ("optimizer", (GIB // 4,)),
                                          ("header.npy", (GIB,))])
def test_an_npy_header_claiming_a_huge_array_is_refused_fast_and_small(tmp_path, valid, member, shape):
    entries = entries_of(valid)
    member = optimizer_member(entries) if member == "optimizer" else member
    data = array_of(dict(entries)[member])
    forged = [(name, npy_bytes(shape=shape, dtype=data.dtype, data=data.tobytes()) if name == member else content)
              for name, content in entries]
    path = tmp_path / "forged.ckpt"
    write_zip(path, forged)
    assert_refused_cheaply(path, valid, f"its member {member!r} declares")


def test_members_claiming_more_than_the_file_holds_are_refused(tmp_path, valid):
    entries = entries_of(valid)
    path = tmp_path / "forged.ckpt"
    # a deflated member that claims 1 GiB behind 10 bytes, and a stored one whose zip entry lies
    write_zip(path, [e for e in entries if e[0] != "state/bias_ih_l0.npy"]
              + [("state/bias_ih_l0.npy", b"\x03\x00" * 5, GIB, 0)])
    with pytest.raises(CheckpointError, match="'state/bias_ih_l0.npy' is compressed"):
        rc.load(path)
    data = bytearray(valid.read_bytes())
    # the member's central directory entry: its name's last occurrence, after 46 fixed bytes
    at = data.rindex(b"state/bias_ih_l0.npy") - 46
    assert data[at:at + 4] == b"PK\x01\x02"
    struct.pack_into("<LL", data, at + 20, GIB, GIB)  # compressed and uncompressed sizes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="'state/bias_ih_l0.npy' declares 1073741824 bytes, more than the "
                                              "file holds"):
        rc.load(path)


# every entry of the header type-checked: a mistyped one is refused, never coerced
MISTYPED = [
    ("training", "false", "'training': expected a JSON bool (true or false), got 'false'"),
    ("training", 0, "'training': expected a JSON bool (true or false), got 0"),
    ("rnncore_version", 1, "'rnncore_version': expected a string, got 1"),
    ("class", ["GRU"], "'class': expected a string, got ['GRU']"),
    ("config", [3, 4], "'config': expected an object, got [3, 4]"),
    ("dtype", 32, "'dtype': expected a dtype name or a list of them, got 32"),
    ("state", "weight_ih_l0", "'state': expected a list of distinct array names, got 'weight_ih_l0'"),
    ("state", ["weight_ih_l0", "weight_ih_l0"], "'state': expected a list of distinct array names"),
    ("optimizer", [], "'optimizer': expected null or an object, got []"),
]


@pytest.mark.parametrize("key,value,match", MISTYPED, ids=[f"{k}={v!r}" for k, v, _ in MISTYPED])
def test_every_header_entry_is_type_checked(valid, key, value, match):
    entries = entries_of(valid)
    header = header_of(entries)
    header[key] = value
    write_zip(valid, with_header(entries, header))
    with pytest.raises(CheckpointError, match="has an invalid header: ") as refused:
        rc.load(valid)
    assert match in str(refused.value)


def test_missing_and_unknown_header_entries_and_optimizer_trees_are_refused(valid):
    entries = entries_of(valid)
    header = header_of(entries)
    del header["training"]
    header["trusted"] = True
    write_zip(valid, with_header(entries, header))
    with pytest.raises(CheckpointError, match=r"it lacks the entries \['training'\]; it has the unknown entries "
                                              r"\['trusted'\]"):
        rc.load(valid)
    header = header_of(entries)
    for tree, match in [({"array": "state/weight_ih_l0"}, "is not one rnncore writes"),
                        ({"dict": [[1.5, {"value": 1}]]}, "is not one rnncore writes"),
                        ({"list": [{"value": 1}, {"a": 1, "b": 2}]}, "is not a tagged node")]:
        write_zip(valid, with_header(entries, {**header, "optimizer": tree}))
        with pytest.raises(CheckpointError, match=match):
            rc.load(valid)


def test_a_false_training_entry_loads_in_eval_mode(tmp_path):
    path = tmp_path / "model.ckpt"
    rc.save(path, rc.GRU(3, 4).eval())
    assert rc.load(path).training is False
    rc.save(path, rc.GRU(3, 4))
    assert rc.load(path).training is True


# -- item: saving through links, refusing special files, cleaning up after killed saves -----

def test_saving_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "store" / "real.ckpt"
    link = tmp_path / "links" / "model.ckpt"
    chained = tmp_path / "links" / "latest.ckpt"
    os.symlink(os.path.join("..", "store", "real.ckpt"), link)  # relative, as links usually are
    os.symlink("model.ckpt", chained)
    first, second = rc.GRU(3, 4, seed=0), rc.GRU(3, 4, seed=1)
    rc.save(link, first)  # a dangling link: its target is created
    assert link.is_symlink() and target.is_file() and not target.is_symlink()
    rc.save(chained, second)
    assert chained.is_symlink() and os.readlink(chained) == "model.ckpt"
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "store", "real.ckpt")
    assert_same_state(rc.load(target), second)
    assert_same_state(rc.load(chained), second)
    # the temporary went beside the target, and away
    assert sorted(os.listdir(tmp_path / "store")) == ["real.ckpt"]
    assert sorted(os.listdir(tmp_path / "links")) == ["latest.ckpt", "model.ckpt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_an_existing_checkpoint_keeps_its_permissions(tmp_path):
    path = tmp_path / "model.ckpt"
    rc.save(path, rc.GRU(3, 4))
    os.chmod(path, 0o600)
    rc.save(path, rc.GRU(3, 4, seed=1))
    assert path.stat().st_mode & 0o777 == 0o600


def special_files(tmp_path):
    """{kind: path} of the special files this machine lets a test make."""
    made = {"directory": tmp_path / "a-directory"}
    made["directory"].mkdir()
    if hasattr(os, "mkfifo"):
        made["FIFO"] = tmp_path / "a-fifo"
        os.mkfifo(made["FIFO"])
    try:
        # a copy of /dev/null's device in the test's own directory (needs privileges)
        os.mknod(tmp_path / "a-device", 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
        made["character device"] = tmp_path / "a-device"
    except (AttributeError, OSError):
        # without privileges the real /dev/null is safe to try: /dev is not writable then
        if os.path.exists("/dev/null") and not os.access("/dev", os.W_OK):
            made["character device"] = "/dev/null"
    return made


def test_special_files_are_refused_and_left_alone(tmp_path):
    made = special_files(tmp_path)
    assert "directory" in made
    links = {kind: tmp_path / f"link-to-{kind.replace(' ', '-')}" for kind in made}
    for kind, path in made.items():
        os.symlink(path, links[kind])
    listing = sorted(os.listdir(tmp_path))
    for kind, path in made.items():
        before = os.stat(path)
        for given in (path, links[kind]):
            with pytest.raises(ValueError, match=f"save: path: expected a regular file or a new file name, got "
                                                 f".*a {kind}; nothing was written"):
                rc.save(given, rc.GRU(3, 4))
        after = os.stat(path)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
        assert links[kind].is_symlink()
    assert sorted(os.listdir(tmp_path)) == listing
    assert os.listdir(made["directory"]) == []


def temporaries(directory, name="model.ckpt"):
    return sorted(entry for entry in os.listdir(directory)
                  if entry.startswith(f".{name}.") and entry.endswith(".rnncore-tmp"))


def written_temporaries(directory):
    return [name for name in temporaries(directory) if os.stat(os.path.join(directory, name)).st_size]


HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"half a checkpoint")
    print("holding", flush=True)
    sys.stdin.read()
""")


@pytest.mark.skipif(os.name != "posix", reason="advisory locks (flock)")
def test_stale_temporaries_of_the_same_target_are_removed_and_live_ones_kept(tmp_path):
    path = tmp_path / "model.ckpt"
    stale = tmp_path / ".model.ckpt.0123456789abcdef.rnncore-tmp"
    stale.write_bytes(b"\0" * 100_000)
    empty_old = tmp_path / ".model.ckpt.00000000000000ee.rnncore-tmp"
    empty_old.touch()
    os.utime(empty_old, (time.time() - 3600, time.time() - 3600))
    # kept: an empty one just made (a writer may not have locked it yet), another target's,
    # names that only look alike, and one a live writer holds
    empty_new = tmp_path / ".model.ckpt.00000000000000ff.rnncore-tmp"
    empty_new.touch()
    kept = [empty_new.name, ".other.ckpt.0123456789abcdef.rnncore-tmp", ".model.ckpt.backup.rnncore-tmp",
            ".model.ckpt.0123456789ABCDEF.rnncore-tmp", "model.ckpt.0123456789abcdef.rnncore-tmp"]
    for name in kept[1:]:
        (tmp_path / name).write_bytes(b"x")
    live = tmp_path / ".model.ckpt.1111111111111111.rnncore-tmp"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"holding\n"
        rc.save(path, rc.GRU(3, 4))
        assert sorted(os.listdir(tmp_path)) == sorted(kept + [live.name, "model.ckpt"])
        assert live.read_bytes() == b"half a checkpoint"
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
    # its writer gone (killed or not), the next save removes it
    rc.save(path, rc.GRU(3, 4))
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["model.ckpt"])


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    import rnncore as rc
    path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # about 5 MB: a save takes milliseconds, so kills and concurrent saves land mid-write
    layer = rc.LSTM(32, 128, num_layers=2, bidirectional=True, dtype=np.float64, seed=seed)
    print("saving", flush=True)
    n = 0
    while n != count:
        rc.save(path, layer)
        n += 1
""")


def saver(path, count, seed):
    return subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(count), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


@pytest.mark.skipif(os.name != "posix" or not hasattr(signal, "SIGKILL"), reason="advisory locks and SIGKILL")
def test_concurrent_and_killed_savers_leave_one_checkpoint_and_no_temporaries(tmp_path):
    path = tmp_path / "model.ckpt"
    versions = [rc.LSTM(32, 128, num_layers=2, bidirectional=True, dtype=np.float64, seed=seed).state_dict()
                for seed in (1, 2, 3)]
    rng = np.random.default_rng(0)
    # two savers of the same target, each saving to the end, while a third is killed
    # mid-save again and again: the cleanups must never take a live saver's temporary
    steady = [saver(path, 60, seed) for seed in (1, 2)]
    killed = 0
    try:
        for process in steady:
            assert process.stdout.readline() == b"saving\n"
        while all(process.poll() is None for process in steady) and killed < 8:
            victim = saver(path, -1, 3)
            assert victim.stdout.readline() == b"saving\n"
            time.sleep(rng.uniform(0.02, 0.2))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            victim.stdout.close()
            victim.stderr.close()
            killed += 1
        for process in steady:
            assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    finally:
        for process in steady:
            process.kill()
            process.wait()
            process.stdout.close()
            process.stderr.close()
    assert killed >= 2
    loaded = rc.load(path).state_dict()
    assert any(all(np.array_equal(loaded[k], v[k]) for k in v) for v in versions)
    # every killed save's temporary is gone by the next save, but for the last one and
    # those killed before they had a byte (left for a minute: see the test above)
    assert len(written_temporaries(tmp_path)) <= 1
    rc.save(path, rc.load(path))
    assert sorted(os.listdir(tmp_path)) == sorted(["model.ckpt"] + temporaries(tmp_path))
    assert not written_temporaries(tmp_path)


def _overlapping_checkpoint(path, count, n):
    """A checkpoint of `count` Linear(n, n) weights whose zip members overlap: each
    member's data holds the local header and .npy header of the next, so the file is
    about one array long while it declares `count` of them (CRCs all correct)."""
    real = path.with_name("real.ckpt")
    rc.save(real, rc.Sequential(*[rc.Linear(n, n, bias=False) for _ in range(count)]))
    with zipfile.ZipFile(real) as archive:
        header_member = archive.read("header.npy")
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": (n, n)})
    npy_header = npy.getvalue()
    size = len(npy_header) + n * n * 4

    def local(name, crc, length):
        raw = name.encode()
        return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, length, length, len(raw), 0) + raw

    names = ["header.npy"] + [f"state/{k}.weight.npy" for k in range(count)]
    out = bytearray(local(names[0], zlib.crc32(header_member), len(header_member)) + header_member)
    offsets, starts = [0], []
    for name in names[1:]:
        offsets.append(len(out))
        out += local(name, 0, size)
        starts.append(len(out))
        out += npy_header
    out += b"\0" * (starts[-1] + size - len(out))
    for k in reversed(range(count)):  # a member's CRC covers the next ones' headers
        struct.pack_into("<I", out, offsets[k + 1] + 14, zlib.crc32(bytes(out[starts[k]:starts[k] + size])))
    directory = bytearray()
    for offset, name in zip(offsets, names):
        crc, length = struct.unpack_from("<II", out, offset + 14)
        raw = name.encode()
        directory += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, crc, length, length,
                                 len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(names), len(names), len(directory), len(out), 0)
    path.write_bytes(bytes(out) + bytes(directory) + end)
    return count * size


def test_overlapping_members_are_refused(tmp_path):
    """Members that overlap let a file declare arrays many times its size (200 Linear(256,
    256) weights, 52 MB, in a 335 KB file loaded before the fix); zipfile itself refuses
    this only from Python 3.11.8/3.12.2."""
    path = tmp_path / "overlap.ckpt"
    declared = _overlapping_checkpoint(path, 20, 64)
    assert declared > 10 * path.stat().st_size
    with pytest.raises(CheckpointError, match="overlap"):
        rc.load(path)
