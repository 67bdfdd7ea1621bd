"""Checkpoints: a layer, cell or registered model, and optionally an optimizer's state, in
one file that a crash cannot half-write and that loading never executes.

Format (version 1): an uncompressed NumPy `.npz` (a zip of `.npy` members) holding
- `header`: UTF-8 JSON as a uint8 array: {"format": "rnncore.checkpoint",
  "format_version": 1, "rnncore_version", "class" (a registered name), "config" (the
  object's get_config()), "dtype", "training", "state" (the names of its arrays, in
  order), "optimizer" (null, or the optimizer state's structure: nested dicts, lists and
  scalars, with each array replaced by the name of its member)};
- `state/<name>`: each array of the object's state_dict(), in its own dtype (bit-exact);
- `optimizer/<n>`: each array of the optimizer state.

Saving writes a temporary file in the target's directory, flushes and fsyncs it, renames
it over the target (`os.replace`, atomic) and fsyncs the directory: at every instant the
path holds either the previous checkpoint or the new one, complete. Loading reads with
`allow_pickle=False`, builds only classes registered by name, checks every member
against the header, and relies on the zip's CRC-32 to refuse corrupted bytes.
"""
import io
import json
import os
import secrets
import warnings
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from . import _backend, _validate, optim
from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN, JordanRNN
from .nn import Embedding, LastStep, Linear, ReLU, Sequential, Sigmoid, Tanh

__all__ = ["save", "load", "read", "register", "registered", "Checkpoint", "CheckpointError", "FORMAT_VERSION"]

FORMAT = "rnncore.checkpoint"
FORMAT_VERSION = 1

Checkpoint = namedtuple("Checkpoint", ["obj", "optimizer_state", "header"])


class CheckpointError(ValueError):
    """A file that is not a complete, readable rnncore checkpoint of a known format."""


# -- the registry: the only classes a checkpoint may name --------------------------------

_REGISTRY = {}


def register(cls=None, *, name=None):
    """Allow checkpoints of `cls` (saved and loaded under `name`, by default its class
    name). Usable as a decorator. The class needs state_dict(), load_state_dict(mapping)
    and get_config() returning JSON-serialisable constructor arguments; it is rebuilt by
    `cls.from_config(config)` if it defines one, else `cls(**config)`."""
    def add(cls):
        missing = [m for m in ("state_dict", "load_state_dict", "get_config") if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"register: {cls.__name__} lacks {missing}, which checkpoints need")
        key = name or cls.__name__
        if _REGISTRY.get(key, cls) is not cls:
            raise ValueError(f"register: the name {key!r} is already taken by {_REGISTRY[key].__module__}."
                             f"{_REGISTRY[key].__qualname__}; pass name= to register {cls.__qualname__}")
        _REGISTRY[key] = cls
        return cls
    return add if cls is None else add(cls)


def registered():
    """The registered names and classes."""
    return dict(_REGISTRY)


for _cls in (RNN, LSTM, GRU, JordanRNN, RNNCell, LSTMCell, GRUCell,
             Linear, Embedding, Tanh, ReLU, Sigmoid, LastStep, Sequential):
    register(_cls)


def _registered_name(obj):
    for key, cls in _REGISTRY.items():
        if type(obj) is cls:
            return key
    raise TypeError(f"save: {type(obj).__name__} is not a registered checkpoint class (registered: "
                    f"{sorted(_REGISTRY)}); register it with rnncore.checkpoint.register")


# -- optimizer state: nested containers of arrays and scalars ---------------------------

def _encode(value, arrays, where):
    """A JSON-able description of `value`, moving its arrays into `arrays`."""
    if isinstance(value, Mapping):
        bad = [k for k in value if isinstance(k, bool) or not isinstance(k, (str, int))]
        if bad:
            raise TypeError(f"save: optimizer state {where} has keys {bad!r}; only str and int keys are stored")
        return {"dict": [[k, _encode(v, arrays, f"{where}[{k!r}]")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list":
                [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, np.generic) or hasattr(value, "__array__") or hasattr(value, "detach"):
        array = _validate.to_numpy(value)
        if array.dtype.hasobject:
            raise TypeError(f"save: optimizer state {where} is an object array; only numeric arrays are stored")
        key = f"optimizer/{len(arrays)}"
        arrays[key] = array
        # a NumPy scalar is stored as a 0-d array and comes back as the same scalar type
        return {"scalar" if isinstance(value, np.generic) else "array": key}
    raise TypeError(f"save: optimizer state {where} is a {type(value).__name__}; only dicts, lists, tuples, "
                    f"arrays, numbers, strings and None are stored")


def _decode(node, arrays):
    (tag, content), = node.items()
    if tag == "dict":
        return {k: _decode(v, arrays) for k, v in content}
    if tag in ("list", "tuple"):
        items = [_decode(v, arrays) for v in content]
        return tuple(items) if tag == "tuple" else items
    if tag == "value":
        return content
    if tag in ("array", "scalar"):
        return arrays[content][()] if tag == "scalar" else arrays[content]
    raise CheckpointError(f"unknown optimizer state entry {tag!r}")


# -- save ---------------------------------------------------------------------------------

def save(path, obj, optimizer=None):
    """Write `obj` (a layer, cell or registered model) and, optionally, an optimizer's
    state (an object with state_dict(), or that dict itself) to `path`, atomically."""
    from . import __version__
    name = _registered_name(obj)
    config = obj.get_config()
    state = {key: _validate.to_numpy(value) for key, value in obj.state_dict().items()}
    objects = [key for key, value in state.items() if value.dtype.hasobject]
    if objects:
        raise TypeError(f"save: state_dict entries {objects} are object arrays; only numeric arrays are stored")
    arrays = {f"state/{key}": value for key, value in state.items()}
    if optimizer is not None:
        optimizer_state = optimizer.state_dict() if callable(getattr(optimizer, "state_dict", None)) else optimizer
        if not isinstance(optimizer_state, Mapping):
            raise TypeError(f"save: optimizer: expected an object with state_dict() or a dict, got "
                            f"{type(optimizer).__name__}")
        optimizer_tree = _encode(optimizer_state, arrays, "")
    else:
        optimizer_tree = None
    dtypes = sorted({value.dtype.name for value in state.values()})
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "rnncore_version": __version__,
              "class": name, "config": config, "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
              "training": bool(getattr(obj, "training", False)), "state": list(state),
              "optimizer": optimizer_tree}
    try:
        text = json.dumps(header, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"save: the get_config() of {type(obj).__name__} is not JSON-serialisable ({exc})") from None
    arrays["header"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _write_atomically(os.fspath(path), arrays)


def _write_atomically(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never another file's name; mode 0o666 less the umask, as a plain open() gives
    # (mkstemp's 0o600 would make every checkpoint private)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    # the rename itself is durable only once the directory entry is on disk
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- load ---------------------------------------------------------------------------------

def _read_members(path):
    """Every member of the archive, each CRC-checked as it is read."""
    where = f"rnncore.load: {os.fspath(path)!r}"
    with open(path, "rb") as file:  # a missing or unreadable path raises as itself
        data = file.read()
    if not data.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{where} is not an rnncore checkpoint (not a zip archive; "
                              f"{'empty' if not data else 'it starts with ' + repr(data[:8])})")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as exc:
        # whatever the zip or .npy reader trips over in damaged bytes (BadZipFile, a bad
        # CRC-32, EOFError, ValueError, even NotImplementedError for a mangled
        # compression field) means the same thing here
        raise CheckpointError(f"{where} is not a readable rnncore checkpoint: it is truncated, corrupt or "
                              f"not written by rnncore ({type(exc).__name__}: {exc})") from None


def _header(members, where):
    raw = members.get("header")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{where} is not an rnncore checkpoint: it has no header")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where} has an unreadable header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not an rnncore checkpoint (its header names no {FORMAT!r} format)")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {version} (written by rnncore "
                              f"{header.get('rnncore_version', '?')}); this rnncore reads format versions up to "
                              f"{FORMAT_VERSION}: upgrade rnncore to load it")
    for key, kind in (("class", str), ("config", dict), ("state", list)):
        if not isinstance(header.get(key), kind):
            raise CheckpointError(f"{where} has a header without a valid {key!r} entry")
    return header


def read(path):
    """Checkpoint(obj, optimizer_state, header) from a file written by `save`;
    optimizer_state is None when none was saved. Truncated or corrupt files, files of a
    newer format and unregistered classes raise CheckpointError."""
    where = f"rnncore.load: {os.fspath(path)!r}"
    members = _read_members(path)
    header = _header(members, where)
    cls = _REGISTRY.get(header["class"])
    if cls is None:
        raise CheckpointError(f"{where} holds a {header['class']!r}, which is not a registered checkpoint class "
                              f"(registered: {sorted(_REGISTRY)}); import the module that registers it first")
    state = {}
    for key in header["state"]:
        if f"state/{key}" not in members:
            raise CheckpointError(f"{where} lacks the array {key!r} that its header lists (truncated or corrupt)")
        state[key] = members[f"state/{key}"]
    optimizer_state = None
    if header.get("optimizer") is not None:
        try:
            optimizer_state = _decode(header["optimizer"], members)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{where} has an optimizer state that does not match its arrays ({exc!r})") from None

    config = dict(header["config"])
    if config.get("backend") is not None and config["backend"] not in _backend.backends():
        warnings.warn(f"{where} was saved with backend={config['backend']!r}, which is not available here; "
                      f"loading it with the default backend", RuntimeWarning, stacklevel=3)
        config["backend"] = None
    try:
        obj = cls.from_config(config) if callable(getattr(cls, "from_config", None)) else cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: its configuration does not build a {header['class']} ({exc})") from None
    expected = obj.state_dict()
    wrong = [f"{key}: expected {expected[key].dtype}{expected[key].shape}, got {value.dtype}{value.shape}"
             for key, value in state.items()
             if key in expected and (value.dtype != expected[key].dtype or value.shape != expected[key].shape)]
    if wrong or set(state) != set(expected):
        raise CheckpointError(f"{where}: its arrays do not fit a {header['class']} of its configuration "
                              f"({'; '.join(wrong) or f'names {sorted(state)} != {sorted(expected)}'})")
    obj.load_state_dict(state)
    if callable(getattr(obj, "train", None)):
        obj.train(bool(header.get("training", True)))
    return Checkpoint(obj, optimizer_state, header)


def load(path, optimizer=None):
    """The object saved in `path`. With `optimizer`, also restore the saved optimizer
    state into it (through its load_state_dict) and, when it has `rebind(modules)` (as
    rnncore's optimizers do), bind it to the returned object's parameters, so that
    `model = rc.load(path, optimizer=opt)` resumes training `model`. A file without an
    optimizer state, or an optimizer that does not fit the returned object, is an error
    then, and leaves the optimizer unchanged."""
    obj, optimizer_state, _ = read(path)
    if optimizer is None:
        return obj
    if optimizer_state is None:
        raise CheckpointError(f"rnncore.load: {os.fspath(path)!r} holds no optimizer state to restore")
    if isinstance(optimizer, optim._Optimizer):
        previous = optimizer._modules
        optimizer.rebind(obj)
        try:
            optimizer.load_state_dict(optimizer_state)
        except BaseException:
            optimizer.rebind(previous)
            raise
    else:
        optimizer.load_state_dict(optimizer_state)
        if callable(getattr(optimizer, "rebind", None)):
            optimizer.rebind(obj)
    return obj
