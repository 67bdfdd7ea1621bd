"""Checkpoints: a layer, cell or registered model, and optionally an optimizer's state, in
one file that a crash cannot half-write and that loading never executes.

Format (version 2): an uncompressed NumPy `.npz` (a zip of `.npy` members) holding
- `header`: UTF-8 JSON as a uint8 array: {"format": "rnncore.checkpoint",
  "format_version": 2, "rnncore_version", "class" (a registered name), "config" (the
  object's get_config()), "dtype", "training", "state" (the names of its arrays, in
  order), "optimizer" (null, or the optimizer state's structure: nested dicts, lists and
  scalars, with each array replaced by the name of its member), "generators" (the state
  of the random generator of the object and of each module inside it that draws masks,
  keyed by its place: "" the object, "0." its first module; version 1 has none)};
- `state/<name>`: each array of the object's state_dict(), in its own dtype (bit-exact);
- `optimizer/<n>`: each array of the optimizer state.

Saving writes a temporary file in the target's directory, flushes and fsyncs it, renames
it over the target (`os.replace`, atomic) and fsyncs the directory: at every instant the
path holds either the previous checkpoint or the new one, complete. A symbolic link is
written through (its final target is replaced, the link stays); anything but a regular
file is refused. A save that is killed leaves its temporary `.<name>.<hex>.rnncore-tmp`
behind; the next save to the same target removes it (where flock exists).

Loading never unpickles and builds only classes registered by name; it accepts only
stored (uncompressed) members, exactly those the header names, each .npy header agreeing
with its member's size, and builds the model under a budget of the bytes its arrays
hold: a forged file is refused before it costs more memory than its own size. The zip's
CRC-32 refuses corrupted bytes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import reprlib
import secrets
import stat
import time
import warnings
import zipfile
from collections import namedtuple
from collections.abc import Mapping
from typing import Any, Union

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no cleanup of killed saves' temporaries
    fcntl = None

from .._version import __version__
from ..core import functional, module, validate
from ..core.docs import filled
from ..core.module import register, registered, unregister, _REGISTRY

__all__ = ["save", "load", "read", "register", "registered", "unregister", "Checkpoint", "CheckpointError",
           "FORMAT_VERSION"]

FORMAT = "rnncore.checkpoint"
FORMAT_VERSION = 2

# The entries the functions' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'path': 'path : str or os.PathLike\n        The checkpoint file.',
    'read_raises': 'CheckpointError\n        A truncated, corrupt or forged file, one of a newer format, or one naming an\n'
                   '        unregistered class, before anything larger than the file is allocated.\n'
                   '    OSError\n        The path is missing or unreadable.',
    'example': '>>> import os, tempfile, numpy as np, rnncore as rc\n'
               '    >>> path = os.path.join(tempfile.mkdtemp(), "model.rnncore")\n'
               '    >>> model = rc.Sequential(rc.GRU(2, 3, seed=0), rc.Linear(3, 1, seed=1))\n'
               '    >>> opt = rc.optim.Adam(model)\n'
               '    >>> rc.save(path, model, optimizer=opt)',
}

Checkpoint = namedtuple("Checkpoint", ["obj", "optimizer_state", "header"])


class CheckpointError(ValueError):
    """A file that is not a complete, readable rnncore checkpoint of a known format."""


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
        array = validate.to_numpy(value)
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
    # "array" or "scalar": the tree was checked by _references before any array was read
    return arrays[content][()] if tag == "scalar" else arrays[content]


# -- save ---------------------------------------------------------------------------------

@filled(_DOCS)
def save(path: Union[str, os.PathLike], obj: Any, optimizer: Any = None) -> None:
    """Write `obj` (a layer, cell or registered model) and, optionally, an optimizer's
    state (an object with state_dict(), or that dict itself) to `path`, atomically.
    Through a symbolic link the link's final target is replaced (the link stays); a
    directory, device, FIFO or socket is refused before anything is written.

    Parameters
    ----------
    %(path)s
    obj : layer, cell or registered model
        Saved as its registered name, get_config() and state_dict().
    optimizer : optimizer or dict, optional
        An object with state_dict(), or that dict; None: no optimizer state.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        obj's class is not registered, its config is not JSON-serialisable, its state
        holds object arrays, or optimizer is neither form.
    ValueError
        path is a directory, device, FIFO or socket.
    OSError
        The file cannot be written; the path is left as it was.

    Examples
    --------
    %(example)s
    >>> rc.load(path)[1]
    Linear(3, 1)
    """
    target = _target(path)
    name = _registered_name(obj)
    config = obj.get_config()
    state = {key: validate.to_numpy(value) for key, value in obj.state_dict().items()}
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
              "optimizer": optimizer_tree,
              "generators": {place: rng.bit_generator.state for place, rng in _generators(obj)}}
    try:
        text = json.dumps(header, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"save: the get_config() of {type(obj).__name__} is not JSON-serialisable ({exc})") from None
    arrays["header"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _write_atomically(target, arrays)


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


def _target(path):
    """The file that saving to `path` replaces: the final target of any symbolic links
    (so that the links stay), which must be a regular file or not exist yet."""
    path = os.fsdecode(os.fspath(path))
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _KINDS if test(mode)), "special file")
        through = f" (through its links, {target!r})" if target != os.path.abspath(path) else ""
        raise ValueError(f"save: path: expected a regular file or a new file name, got {path!r}{through}, "
                         f"a {kind}; nothing was written")
    return target


# Temporaries are named `.<target name>.<16 hex digits>.rnncore-tmp` beside their target;
# each is held under an exclusive lock (flock) by its writer until it has been renamed
# over the target. A temporary that nobody holds is what a killed save left behind.
_TEMPORARY_SUFFIX = ".rnncore-tmp"
# A writer locks its file an instant after creating it: an empty temporary is left alone
# for this many seconds, so that the instant between the two is never mistaken for a kill.
_NEWBORN_SECONDS = 60.0


def _temporary_pattern(name):
    return re.compile(re.escape(f".{name}.") + r"[0-9a-f]{16}" + re.escape(_TEMPORARY_SUFFIX) + r"\Z")


def _remove_stale_temporaries(directory, name):
    """Delete the temporaries of saves to `name` whose writers are gone: those no process
    holds locked (without flock, none: a file cannot be told from a live writer's then)."""
    if fcntl is None:
        return
    pattern = _temporary_pattern(name)
    try:
        entries = [entry for entry in os.listdir(directory) if pattern.match(entry)]
    except OSError:
        return
    for entry in entries:
        candidate = os.path.join(directory, entry)
        try:
            fd = os.open(candidate, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue  # renamed or removed meanwhile, or not ours to open
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or (info.st_size == 0
                                                  and time.time() - info.st_mtime < _NEWBORN_SECONDS):
                continue
            try:
                # only if the name still means the file we hold (never another file's name)
                current = os.lstat(candidate)
                if (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
                    os.unlink(candidate)
            except OSError:
                pass
        finally:
            os.close(fd)


def _write_atomically(target, arrays):
    directory, name = os.path.split(target)
    _remove_stale_temporaries(directory, name)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(8)}{_TEMPORARY_SUFFIX}")
    # O_EXCL: never another file's name; mode 0o666 less the umask, as a plain open() gives
    # (mkstemp's 0o600 would make every checkpoint private)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            if fcntl is not None:
                # blocking: a concurrent cleanup may hold it for an instant, and leaves it then
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)
                # one byte at once (the zip overwrites it), so that only a kill in the
                # instant before the lock can leave an empty temporary, the kind kept a while
                os.ftruncate(file.fileno(), 1)
            try:
                # an existing checkpoint keeps its permissions
                os.chmod(file.fileno(), stat.S_IMODE(os.stat(target).st_mode))
            except (FileNotFoundError, NotImplementedError):
                pass
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
            if fcntl is not None:
                # renamed while still open, hence still locked: no cleanup can take it for
                # an abandoned one between the write and the rename
                os.replace(temporary, target)
        if fcntl is None:  # Windows renames no open file
            os.replace(temporary, target)
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
#
# A checkpoint may come from anyone, so nothing is allocated on the file's word alone:
# every member must be stored uncompressed (as save writes them), so that no member is
# larger than the file; the header must name exactly the members present; each .npy
# header must agree, byte for byte, with the size the zip declares for its member; and
# the model is built under a budget of the bytes its arrays hold, so that a configuration
# claiming more is refused before it allocates. Arrays are read in bounded chunks.

_HEADER_MEMBER = "header.npy"
_MAX_HEADER_BYTES = 64 << 20
_CHUNK = 1 << 20


def _corrupt(where, exc):
    return CheckpointError(f"{where} is not a readable rnncore checkpoint: it is truncated, corrupt or not "
                           f"written by rnncore ({type(exc).__name__}: {exc})")


@contextlib.contextmanager
def _reading(where):
    """Whatever the zip or .npy reader trips over in damaged bytes (BadZipFile, a bad
    CRC-32, EOFError, ValueError, struct errors, a seek before the start) means the same
    thing here: a CheckpointError."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:
        raise _corrupt(where, exc) from None


class _Member:
    """One .npy member: its zip entry and what its .npy header declares."""

    def __init__(self, archive, info, where):
        self.archive, self.info, self.where = archive, info, where
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {info.filename!r} has .npy format version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, self.fortran_order, self.dtype = read_header(stream)
            self.offset = stream.tell()
        if self.dtype.hasobject:
            # the words np.load(allow_pickle=False) uses, which users search for
            raise ValueError(f"member {info.filename!r}: Object arrays cannot be loaded when allow_pickle=False")
        if any(n < 0 for n in self.shape):
            raise ValueError(f"member {info.filename!r} declares the shape {self.shape}")
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        if self.offset + self.nbytes != info.file_size:
            raise CheckpointError(f"{where}: its member {info.filename!r} declares {self.dtype}{self.shape} "
                                  f"({self.nbytes} bytes), but holds {info.file_size - self.offset} bytes of data "
                                  f"(truncated, corrupt or forged)")

    def read(self):
        """The array, read in bounded chunks into its own memory; the zip checks the CRC-32."""
        with _reading(self.where), self.archive.open(self.info) as stream:
            stream.read(self.offset)
            flat = np.empty(math.prod(self.shape), dtype=self.dtype)
            view = flat.view(np.uint8) if self.nbytes else memoryview(b"")
            done = 0
            while done < self.nbytes:
                chunk = stream.read(min(_CHUNK, self.nbytes - done))
                if not chunk:
                    raise EOFError(f"member {self.info.filename!r} ends after {done} of {self.nbytes} bytes")
                view[done:done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                done += len(chunk)
            if stream.read(1):
                raise ValueError(f"member {self.info.filename!r} is longer than it declares")
        if self.fortran_order:
            return flat.reshape(self.shape[::-1]).transpose()
        return flat.reshape(self.shape)


def _members(archive, size, where):
    """{name: ZipInfo} of the archive's members, each within the file's `size` bytes and
    none overlapping another."""
    infos = {}
    for info in archive.infolist():
        if info.filename in infos:
            raise CheckpointError(f"{where} holds two members named {info.filename!r} (corrupt or forged)")
        infos[info.filename] = info
    # members must not overlap: one member's bytes holding the next ones would let a small
    # file declare arrays many times its size (zipfile refuses this only from 3.11.8/3.12.2)
    ordered = sorted(infos.values(), key=lambda i: i.header_offset)
    for info in ordered:
        _within(info, size, where)
    for info, following in zip(ordered, ordered[1:]):
        if info.header_offset + info.compress_size > following.header_offset:
            raise CheckpointError(f"{where}: its members {info.filename!r} and {following.filename!r} overlap "
                                  f"(corrupt or forged)")
    return infos


def _stored(info, size, where):
    """`info`, unless its member is compressed or claims more bytes than the file holds."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise CheckpointError(f"{where}: its member {info.filename!r} is compressed or encrypted; rnncore "
                              f"checkpoints store every member uncompressed (as rnncore.save writes them), so "
                              f"that no member can be larger than the file")
    if info.file_size != info.compress_size:
        _too_large(info, where)
    return _within(info, size, where)


def _within(info, size, where):
    """`info`, unless its member's bytes would run past the file's end."""
    if info.header_offset + info.compress_size > size:
        _too_large(info, where)
    return info


def _too_large(info, where):
    raise CheckpointError(f"{where}: its member {info.filename!r} declares {info.file_size} bytes, more "
                          f"than the file holds (truncated, corrupt or forged)")


_HEADER_ENTRIES = {
    # entry: (check, what it must be)
    "format": (lambda v: isinstance(v, str), "a string"),
    "format_version": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "rnncore_version": (lambda v: isinstance(v, str), "a string"),
    "class": (lambda v: isinstance(v, str), "a string"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "dtype": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(d, str) for d in v)),
              "a dtype name or a list of them"),
    "training": (lambda v: isinstance(v, bool), "a JSON bool (true or false)"),
    "state": (lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v) and len(set(v)) == len(v),
              "a list of distinct array names"),
    "optimizer": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "generators": (lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
                   "an object of generator states"),
}
# the entries a file of an older format version lacks
_ADDED_IN = {"generators": 2}


def _header(archive, infos, size, where):
    info = infos.get(_HEADER_MEMBER)
    if info is None:
        raise CheckpointError(f"{where} is not an rnncore checkpoint: it has no header")
    _stored(info, size, where)
    if info.file_size > _MAX_HEADER_BYTES:
        raise CheckpointError(f"{where} has a header of {info.file_size} bytes, more than the "
                              f"{_MAX_HEADER_BYTES} a checkpoint header may take")
    with _reading(where):
        member = _Member(archive, info, where)
    if member.dtype != np.uint8 or len(member.shape) != 1:
        raise CheckpointError(f"{where} is not an rnncore checkpoint: it has no header")
    try:
        header = json.loads(member.read().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{where} has an unreadable header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not an rnncore checkpoint (its header names no {FORMAT!r} format)")
    version = header.get("format_version")
    if not _HEADER_ENTRIES["format_version"][0](version) or version < 1:
        raise CheckpointError(f"{where} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {version} (written by rnncore "
                              f"{header.get('rnncore_version', '?')}); this rnncore reads format versions up to "
                              f"{FORMAT_VERSION}: upgrade rnncore to load it")
    listed = {"lacks the entries": [key for key in _HEADER_ENTRIES
                                    if key not in header and _ADDED_IN.get(key, 1) <= version],
              "has the unknown entries": [key for key in header if key not in _HEADER_ENTRIES]}
    wrong = [f"{key!r}: expected {what}, got {reprlib.repr(header[key])}"
             for key, (check, what) in _HEADER_ENTRIES.items() if key in header and not check(header[key])]
    if any(listed.values()) or wrong:
        raise CheckpointError(f"{where} has an invalid header: " + "; ".join(
            [f"it {what} {found}" for what, found in listed.items() if found] + wrong))
    return header


def _references(node, where):
    """The members an optimizer state tree names, its structure checked on the way."""
    names, pending = set(), [node]
    while pending:
        node = pending.pop()
        if not (isinstance(node, dict) and len(node) == 1):
            raise CheckpointError(f"{where} has an optimizer state entry that is not a tagged node: "
                                  f"{reprlib.repr(node)}")
        (tag, content), = node.items()
        if tag == "dict" and isinstance(content, list) and all(
                isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int))
                and not isinstance(pair[0], bool) for pair in content):
            pending += [value for _, value in content]
        elif tag in ("list", "tuple") and isinstance(content, list):
            pending += content
        elif tag == "value" and (content is None or isinstance(content, (bool, int, float, str))):
            pass
        elif tag in ("array", "scalar") and isinstance(content, str) and content.startswith("optimizer/"):
            names.add(content)
        else:
            raise CheckpointError(f"{where} has an optimizer state entry {reprlib.repr(node)} that is not one "
                                  f"rnncore writes")
    return names


@filled(_DOCS)
def read(path: Union[str, os.PathLike]) -> Checkpoint:
    """Checkpoint(obj, optimizer_state, header) from a file written by `save`;
    optimizer_state is None when none was saved. Truncated, corrupt or forged files,
    files of a newer format and unregistered classes raise CheckpointError, before
    anything larger than the file itself is allocated.

    Parameters
    ----------
    %(path)s

    Returns
    -------
    Checkpoint
        The named tuple (obj, optimizer_state, header): the object rebuilt, the saved
        optimizer state dict or None, and the header's dict.

    Raises
    ------
    %(read_raises)s

    Examples
    --------
    %(example)s
    >>> checkpoint = rc.checkpoint.read(path)
    >>> checkpoint.header["class"], checkpoint.optimizer_state["type"]
    ('Sequential', 'Adam')
    """
    where = f"rnncore.load: {os.fspath(path)!r}"
    with open(path, "rb") as file:  # a missing or unreadable path raises as itself
        start = file.read(8)
        if not start.startswith(b"PK\x03\x04"):
            raise CheckpointError(f"{where} is not an rnncore checkpoint (not a zip archive; "
                                  f"{'empty' if not start else 'it starts with ' + repr(start)})")
        size = os.fstat(file.fileno()).st_size
        with _reading(where):
            archive = zipfile.ZipFile(file)
        with archive:
            return _read_archive(archive, size, where)


def _read_archive(archive, size, where):
    infos = _members(archive, size, where)
    header = _header(archive, infos, size, where)
    cls = _REGISTRY.get(header["class"])
    if cls is None:
        raise CheckpointError(f"{where} holds a {header['class']!r}, which is not a registered checkpoint class "
                              f"(registered: {sorted(_REGISTRY)}); import the module that registers it first")
    state_members = {key: f"state/{key}.npy" for key in header["state"]}
    for key, member in state_members.items():
        if member not in infos:
            raise CheckpointError(f"{where} lacks the array {key!r} that its header lists (truncated or corrupt)")
    references = _references(header["optimizer"], where) if header["optimizer"] is not None else set()
    missing = sorted(name for name in references if f"{name}.npy" not in infos)
    if missing:
        raise CheckpointError(f"{where} has an optimizer state that does not match its arrays (it names "
                              f"{missing}, which the file lacks)")
    unnamed = sorted(set(infos) - {_HEADER_MEMBER, *state_members.values(), *(f"{n}.npy" for n in references)})
    if unnamed:
        # never read: whatever they hold costs nothing
        raise CheckpointError(f"{where} holds members that its header does not name ({reprlib.repr(unnamed)}); "
                              f"truncated, corrupt or forged")
    with _reading(where):
        state = {key: _Member(archive, _stored(infos[member], size, where), where)
                 for key, member in state_members.items()}
        arrays = {name: _Member(archive, _stored(infos[f"{name}.npy"], size, where), where) for name in references}

    config = dict(header["config"])
    if config.get("backend") is not None and config["backend"] not in functional.backends():
        warnings.warn(f"{where} was saved with backend={config['backend']!r}, which is not available here; "
                      f"loading it with the default backend", RuntimeWarning, stacklevel=4)
        config["backend"] = None
    holds = sum(member.nbytes for member in state.values())
    try:
        # twice the arrays' bytes (and 64 KiB) rather than exactly them: a configuration
        # that nearly fits is built, so that the check below can say which array differs
        with module.parameter_budget(2 * holds + (64 << 10)):
            obj = cls.from_config(config) if callable(getattr(cls, "from_config", None)) else cls(**config)
    except module.ParameterBudgetExceeded as exc:
        raise CheckpointError(f"{where}: its configuration asks for far more than its arrays hold ({holds} "
                              f"bytes): {exc}; truncated, corrupt or forged") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: its configuration does not build a {header['class']} ({exc})") from None
    expected = {key: (value.dtype, value.shape) for key, value in obj.state_dict().items()}
    wrong = [f"{key}: expected {expected[key][0]}{expected[key][1]}, got {member.dtype}{member.shape}"
             for key, member in state.items()
             if key in expected and (member.dtype, member.shape) != expected[key]]
    if wrong or set(state) != set(expected):
        raise CheckpointError(f"{where}: its arrays do not fit a {header['class']} of its configuration "
                              f"({'; '.join(wrong) or f'names {sorted(state)} != {sorted(expected)}'})")
    obj.load_state_dict({key: member.read() for key, member in state.items()})
    optimizer_state = None
    if header["optimizer"] is not None:
        try:
            optimizer_state = _decode(header["optimizer"], {name: member.read() for name, member in arrays.items()})
        except RecursionError:
            raise CheckpointError(f"{where} has an optimizer state nested too deeply to be one rnncore writes") \
                from None
    _restore_generators(obj, header.get("generators", {}), where)
    if callable(getattr(obj, "train", None)):
        obj.train(header["training"])
    return Checkpoint(obj, optimizer_state, header)


def _generators(obj, place=""):
    """(place, generator) of `obj` and of every module inside it (a Sequential's
    `modules`, recursively) that holds one: what draws their dropout and regularisers'
    masks, so that a loaded model draws what the saved one would have drawn next."""
    rng = getattr(obj, "_rng", None)
    if isinstance(rng, np.random.Generator):
        yield place, rng
    modules = getattr(obj, "modules", None)
    if isinstance(modules, (list, tuple)):
        for i, module in enumerate(modules):
            yield from _generators(module, f"{place}{i}.")


def _restore_generators(obj, states, where):
    """Put the saved generator states back, each checked by numpy's own setter."""
    generators = dict(_generators(obj))
    unknown = sorted(set(states) - set(generators))
    if unknown:
        raise CheckpointError(f"{where} has generator states for {reprlib.repr(unknown)}, which its model has "
                              f"no generator at; corrupt or forged")
    for place, state in states.items():
        bit_generator = generators[place].bit_generator
        if state.get("bit_generator") != type(bit_generator).__name__:
            raise CheckpointError(f"{where}: the generator at {place!r}: expected a "
                                  f"{type(bit_generator).__name__} state, got {reprlib.repr(state)}")
        try:
            bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise CheckpointError(f"{where}: the generator at {place!r} has an invalid state "
                                  f"({type(exc).__name__}: {exc})") from None


@filled(_DOCS)
def load(path: Union[str, os.PathLike], optimizer: Any = None) -> Any:
    """The object saved in `path`. With `optimizer`, also restore the saved optimizer
    state into it (through its load_state_dict) and, when it has `rebind(modules)` (as
    rnncore's optimizers do), bind it to the returned object's parameters, so that
    `model = rc.load(path, optimizer=opt)` resumes training `model`. A file without an
    optimizer state, or an optimizer that does not fit the returned object, is an error
    then, and leaves the optimizer unchanged.

    Parameters
    ----------
    %(path)s
    optimizer : optimizer, optional
        Restored from the saved state and bound to the returned object; None: the
        optimizer state, if any, is not read into anything.

    Returns
    -------
    obj
        The object saved, rebuilt from its registered class.

    Raises
    ------
    %(read_raises)s
    CheckpointError
        With optimizer, a file that holds no optimizer state.
    TypeError, ValueError, KeyError
        An optimizer that does not fit the returned object or the saved state; it is
        left unchanged.

    Examples
    --------
    %(example)s
    >>> resumed = rc.load(path, optimizer=opt)
    >>> opt.steps
    0
    """
    obj, optimizer_state, _ = read(path)
    if optimizer is None:
        return obj
    if optimizer_state is None:
        raise CheckpointError(f"rnncore.load: {os.fspath(path)!r} holds no optimizer state to restore")
    if callable(getattr(optimizer, "rebind", None)):  # rnncore's optimizers; another steps what it holds
        previous = optimizer._modules
        try:
            optimizer.rebind(obj)
        except TypeError as exc:
            raise TypeError(f"rnncore.load: optimizer: it cannot step the {type(obj).__name__} that "
                            f"{os.fspath(path)!r} holds ({exc}); load without optimizer= and restore its state "
                            f"from rnncore.checkpoint.read(path).optimizer_state") from None
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
