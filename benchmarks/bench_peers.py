"""rnncore against its peers, side by side, and against the FMA peak of the same run.

For each case (cell, T, B, I, H, stack) and dtype, every peer is timed for inference
(eval-mode forward) and for a training step (forward + backward of sum(y * dy)):

- rnncore on its compiled backend (and any other backend asked for: --backends);
- ONNX Runtime and OpenVINO (inference only), both on the graph rnncore.onnx.export
  writes; OpenVINO compiled for the case's static shape with INFERENCE_PRECISION_HINT f32;
- PyTorch CPU (nn.LSTM/GRU/RNN with rnncore's weights);
- JAX: the cell under lax.scan, jit-compiled, the input projection of all steps one
  matrix product before the scan; training through jax.grad; float64 with x64 enabled;
- the NumPy reference (rnncore's "numpy" backend).

Each peer's output is checked against rnncore's once before timing; a peer that does not
compute the case (ONNX Runtime has no float64 recurrent kernels) or that computes it in
lower precision (OpenVINO runs float64 graphs in float32) is left out of that case with a
note, as is a peer whose package is missing.

Fraction of the peak: the FLOPs of the case's products, 2 T B G H (I + H) per layer and
direction for inference and three times that for training, over the time, over the
single-core FMA peak that rnncore's probe measures in the same process (the best of a
measurement before and after the cases) times the thread count.

The machine is shared and drifts (turbo, neighbours): the peers are interleaved in
rounds, each round a short block of calls per peer after one untimed call (the first
call of a block pays for cold caches and sleeping threads), medians over all of them;
after threaded work there is a pause, so that spinning worker threads do not slow the
next peer. Each thread count runs in its own process, pinned to that many CPUs (where the OS
allows), so that every library, XLA included, sees the same cores; each is also told the
count (torch.set_num_threads, ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS,
rnncore.set_num_threads, threadpoolctl for BLAS).

`--profile` times, for rnncore's compiled backend, the parts of a call that can be timed
from outside (the note in peers.profile.md says what each figure is).

    python benchmarks/bench_peers.py                 # full run: 1 and 2 threads, float32 and float64
    python benchmarks/bench_peers.py --quick         # a smoke run, seconds
    python benchmarks/bench_peers.py --threads 1 --dtypes float32 --cells lstm --cases c3 c4
    python benchmarks/bench_peers.py --profile       # the breakdown of rnncore's calls
    python benchmarks/bench_peers.py --report        # tables and plot again from peers.json

Writes benchmarks/results/peers.json, peers.md (the README table) and peers.png; with
--profile, peers.profile.json and peers.profile.md.
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rnncore as rc

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CASES = [(100, 1, 8, 32), (100, 16, 32, 64), (50, 64, 128, 256), (25, 32, 512, 512), (200, 8, 16, 128)]
CASE_NAMES = ["c1", "c2", "c3", "c4", "c5"]
BIDIRECTIONAL = "bi"  # the 2-layer bidirectional LSTM at c3's shape
CELLS = ["lstm", "gru", "rnn"]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DTYPES = ["float32", "float64"]
PAUSE = 0.15
# the time a block of calls of one peer aims at in each round (fewer calls for slow ones)
BLOCK_SECONDS = 0.08
# peers, in table order; the fastest of them is what rnncore is measured against
PEERS = ["onnxruntime", "openvino", "torch", "jax", "rnncore-numpy"]
INFER_ONLY = {"onnxruntime", "openvino"}
LABELS = {"onnxruntime": "ORT", "openvino": "OpenVINO", "torch": "torch", "jax": "JAX", "rnncore-numpy": "NumPy ref"}
PEER_COLORS = {"onnxruntime": "C0", "openvino": "C4", "torch": "C3", "jax": "C1", "rnncore-numpy": "C2",
               "rnncore-numba": "C5"}
# a peer's output against rnncore's, relative to max |y|: a float64 peer must agree to
# float64's accuracy (one computing in float32 misses by about 1e-7)
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}


# -- the cases ---------------------------------------------------------------------------

def case_list(cells, names):
    """(name, cell, T, B, I, H, layers, bidirectional) for the cases asked for."""
    cases = [(name, cell, *shape, 1, False) for name, shape in zip(CASE_NAMES, CASES) if name in names
             for cell in cells]
    if BIDIRECTIONAL in names and "lstm" in cells:
        cases.append((BIDIRECTIONAL, "lstm", *CASES[2], 2, True))
    return cases


def flops(T, B, I, H, G, layers, directions):
    """Multiply-add FLOPs of a forward's products: the input projection and the recurrence."""
    total = 0
    for layer in range(layers):
        width = I if layer == 0 else directions * H
        total += directions * 2 * T * B * G * H * (width + H)
    return total


def case_label(row):
    extra = f" x{row['layers']} bi" if row["bidirectional"] else ""
    return f"{row['name']} {row['cell'].upper()}{extra} ({row['T']},{row['B']},{row['I']},{row['H']})"


# -- the peers: each builds (infer, train) closures; infer returns the output -------------

def rnncore_peer(case, dtype, backend, x, dy):
    _, cell, T, B, I, H, layers, bidirectional = case
    cls = {"lstm": rc.LSTM, "gru": rc.GRU, "rnn": rc.RNN}[cell]
    layer = cls(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, seed=0, backend=backend)

    def infer():
        layer.eval()
        return layer(x)[0]

    def train():
        layer.train()
        layer(x)
        layer.backward(dy)
    return layer, infer, train


def torch_peer(state_dict, case, dtype, x, dy):
    import torch
    _, cell, T, B, I, H, layers, bidirectional = case
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    module = cls(I, H, num_layers=layers, bidirectional=bidirectional).to(getattr(torch, dtype))
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)

    def infer():
        module.eval()
        with torch.no_grad():
            return module(tx)[0].numpy()

    def train():
        module.train()
        y, _ = module(tx.clone().requires_grad_(True))
        y.backward(tdy)
        for p in module.parameters():
            p.grad = None
    return infer, train


def ort_peer(path, threads, x):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # an unsupported dtype is reported here, not on stderr
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return (lambda: session.run(None, feed)[0]), None


def openvino_peer(path, threads, x):
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0]: list(x.shape)})  # static shapes: what a deployment compiles
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def infer():
        request.infer({0: x})
        return request.get_output_tensor(0).data
    return infer, None


def jax_peer(state_dict, case, x, dy):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64; float32 stays float32
    _, cell, T, B, I, H, layers, bidirectional = case
    D = 2 if bidirectional else 1
    params = [[{name: jnp.asarray(state_dict[f"{name}_l{k}{'_reverse' if d else ''}"])
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")} for d in range(D)]
              for k in range(layers)]

    def step_fn(p):
        # PyTorch's equations and gate order (i f g o; r z n); x_proj already holds W_ih x + b_ih
        w_hh, b_hh = p["weight_hh"], p["bias_hh"]
        if cell == "lstm":
            def step(carry, x_proj):
                h, c = carry
                i, f, g, o = jnp.split(x_proj + h @ w_hh.T + b_hh, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h
        elif cell == "gru":
            def step(h, x_proj):
                xr, xz, xn = jnp.split(x_proj, 3, axis=-1)
                hr, hz, hn = jnp.split(h @ w_hh.T + b_hh, 3, axis=-1)
                r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
                h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
                return h, h
        else:
            def step(h, x_proj):
                h = jnp.tanh(x_proj + h @ w_hh.T + b_hh)
                return h, h
        return step

    def forward(params, inputs):
        for stack in params:
            outputs = []
            for d, p in enumerate(stack):
                x_proj = inputs @ p["weight_ih"].T + p["bias_ih"]
                h0 = jnp.zeros((B, H), inputs.dtype)
                _, ys = jax.lax.scan(step_fn(p), (h0, h0) if cell == "lstm" else h0, x_proj, reverse=d == 1)
                outputs.append(ys)
            inputs = jnp.concatenate(outputs, axis=-1) if D > 1 else outputs[0]
        return inputs

    jx, jdy = jnp.asarray(x), jnp.asarray(dy)
    infer_jit = jax.jit(forward)
    grad_jit = jax.jit(jax.grad(lambda params, inputs: jnp.sum(forward(params, inputs) * jdy), argnums=(0, 1)))
    return (lambda: infer_jit(params, jx).block_until_ready()), (lambda: jax.block_until_ready(grad_jit(params, jx)))


def build_peers(case, dtype, threads, args, notes):
    """{name: (infer or None, train or None)}, rnncore's primary backend first."""
    _, cell, T, B, I, H, layers, bidirectional = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, (2 if bidirectional else 1) * H)).astype(dtype)
    peers = {}
    layer = None
    for backend in args.backends:
        made, infer, train = rnncore_peer(case, dtype, backend, x, dy)
        layer = layer or made
        peers[f"rnncore-{backend}"] = (infer, train)
    state_dict = layer.state_dict()
    path = None
    for name in args.peers:
        try:
            if name in ("onnxruntime", "openvino"):
                if path is None:
                    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
                    rc.onnx.export(layer, path)
                peers[name] = (ort_peer if name == "onnxruntime" else openvino_peer)(path, threads, x)
            elif name == "torch":
                peers[name] = torch_peer(state_dict, case, dtype, x, dy)
            elif name == "jax":
                peers[name] = jax_peer(state_dict, case, x, dy)
        except ImportError as exc:
            notes.setdefault(name, f"not installed ({exc})")
        except Exception as exc:  # the peer cannot build the case: say why, keep going
            notes.setdefault(f"{name} {dtype}", f"{type(exc).__name__}: {str(exc)[:160]} (first at {case[0]} {cell})")
    return peers


def checked(peers, dtype, case, notes):
    """The peers whose output matches rnncore's (and warmed up: compiled, first touch)."""
    ours = next(iter(peers))
    reference = np.asarray(peers[ours][0]())
    scale = max(float(np.max(np.abs(reference))), 1e-30)
    kept = {}
    for name, (infer, train) in peers.items():
        # one note per peer and dtype: a peer that cannot do float64 fails at every case
        where, first = f"{name} {dtype}", f" (first at {case[0]} {case[1]})"
        try:
            y = np.asarray(infer())
            if train:
                train()
                train()
            infer()
        except Exception as exc:  # e.g. ORT's "LSTM operator does not support double yet"
            notes.setdefault(where, f"fails: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}{first}")
            continue
        error = float(np.max(np.abs(y.astype(np.float64) - reference))) / scale if y.shape == reference.shape \
            else math.inf
        if not error <= TOLERANCE[dtype]:
            notes.setdefault(where, f"output differs from rnncore's by {error:.1e} relative (tolerance "
                                    f"{TOLERANCE[dtype]:.0e}): not timed{first}")
            continue
        kept[name] = (infer, train)
    return kept


def block_calls(once):
    """The timed calls of one peer's block (after its untimed one): about BLOCK_SECONDS of
    calls that take `once` seconds each, 1 to 5."""
    return max(1, min(5, int(BLOCK_SECONDS / max(once, 1e-6))))


def time_peers(peers, threads, rounds):
    """{(name, mode): [seconds, ...]}: rounds of a short block of calls per peer, interleaved."""
    blocks, samples = {}, {}
    for name, fns in peers.items():
        for mode, fn in zip(("infer", "train"), fns):
            if fn is None:
                continue
            t0 = time.perf_counter()
            fn()
            once = time.perf_counter() - t0
            blocks[(name, mode)] = (fn, block_calls(once))
            samples[(name, mode)] = []
    for _ in range(rounds):
        for key, (fn, calls) in blocks.items():
            # one call untimed first: the first after another peer's block (and after the
            # pause) pays for cold caches, sleeping workers and, on a virtual machine
            # that reclaims idle memory, pages faulted in again (seen: 20 ms for a 1 ms
            # call after 0.15 s idle), which no steady loop of calls pays
            fn()
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - t0)
            if threads > 1:
                time.sleep(PAUSE)
    return samples


# -- the profile ---------------------------------------------------------------------------

def best_of(*fns, seconds=0.15, at_most=200):
    """Shortest time of each fn, called in turn for about `seconds` (at least 5 rounds): the parts
    of the profile are differences of such times, and the least disturbed call, taken from the
    same stretch of time for each, differs least by noise."""
    times = [[] for _ in fns]
    for fn in fns:
        fn()
    deadline = time.perf_counter() + seconds * len(fns)
    while len(times[0]) < 5 or (time.perf_counter() < deadline and len(times[0]) < at_most):
        for fn, kept in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - t0)
    best = [min(kept) for kept in times]
    return best[0] if len(fns) == 1 else best


def profile_case(recurrent, case, dtype):
    """The parts of an rnncore inference call, each timed on its own (see PROFILE_NOTE)."""
    name, cell, T, B, I, H, layers, bidirectional = case
    D = 2 if bidirectional else 1
    G = GATES[cell]
    rng = np.random.default_rng(2)
    _, infer, train = rnncore_peer(case, dtype, "cython", rng.standard_normal((T, B, I)).astype(dtype),
                                   rng.standard_normal((T, B, D * H)).astype(dtype))
    _, infer_one, _ = rnncore_peer(case, dtype, "cython", rng.standard_normal((1, B, I)).astype(dtype),
                                   rng.standard_normal((1, B, D * H)).astype(dtype))
    _, infer_tiny, _ = rnncore_peer((name, cell, 1, 1, 1, 1, layers, bidirectional), dtype, "cython",
                                    np.ones((1, 1, 1), dtype), np.ones((1, 1, D), dtype))
    row = dict(whole=best_of(infer), one_step=best_of(infer_one), call=best_of(infer_tiny))
    projection = pack = product = 0.0
    w_hh = rng.standard_normal((G * H, H)).astype(dtype)
    h, none = rng.standard_normal((B, H)).astype(dtype), np.empty((0, H), dtype)
    out, out_none = np.empty((B, G * H), dtype), np.empty((0, G * H), dtype)
    tiny = [np.ones((1, 1), dtype), np.ones((1, 1), dtype), np.ones((1, 1), dtype)]
    packed_call, pack_call, step_call = best_of(lambda: recurrent.packed_gemm(*tiny, False),
                                                lambda: recurrent.packed_gemm(none, w_hh, out_none, False),
                                                lambda: recurrent.packed_gemm(h, w_hh, out, False))
    pack_one, step_one = pack_call - packed_call, step_call - pack_call
    for k in range(layers):
        width = I if k == 0 else D * H
        x2 = rng.standard_normal((T * B, width)).astype(dtype)
        w_ih = rng.standard_normal((G * H, width)).astype(dtype)
        projection += D * best_of(lambda: np.dot(x2, w_ih.T))
        pack += D * pack_one
        product += D * T * step_one
    row.update(projection=projection, pack=max(pack, 0.0), product=max(product, 0.0))
    row["rest"] = row["whole"] - row["call"] - row["pack"] - row["projection"] - row["product"]
    row["train"] = best_of(train, seconds=0.3)
    return row


PROFILE_NOTE = """\
What each figure is (rnncore's compiled backend, inference, best of repeated calls; nothing inside a
call can be timed from outside it, so each part is timed on its own and the parts are
estimates):
- whole: one call over the T steps; T=1 call: the same layer over one step;
- call: a call of the same stack at T = B = I = H = 1: validation, planning, allocation,
  the Python around the kernel, with next to no arithmetic (the "Python" share);
- packing: packing W_hh into the product's panels once per layer and direction
  (`packed_gemm` of zero rows minus its call cost);
- input projection: NumPy's BLAS GEMM (T B, I) x (I, G H) per layer and direction, the
  shape of the projection of all steps;
- recurrent products: T times the product of one step, (B, H) x (H, G H) on packed
  weights, measured as `packed_gemm` of B rows minus the same call with zero rows, with
  the weights hot in cache as in the loop;
- rest: whole minus the above: the element-wise cell (activations, state update), the
  layout work between the parts, and whatever the estimates miss (negative where the
  backend's own projection is faster than NumPy's);
- train step: forward in training mode and backward, whole (for scale).
"""


def profile_markdown(rows, meta):
    head = ["case", "dtype", "whole ms", "T=1 call ms", "call (Python) ms", "packing ms", "input projection ms",
            "recurrent products ms", "rest (element-wise, layout) ms", "train step ms"]
    lines = [f"Machine: {meta['processor']}; {meta['isa']}. One thread.", "", PROFILE_NOTE,
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [case_label(row), row["dtype"]] + [f"{1e3 * row[k]:.3f}" for k in (
            "whole", "one_step", "call", "pack", "projection", "product", "rest", "train")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- one thread count, in its own process -----------------------------------------------------

def set_threads(n):
    rc.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
        torch.set_num_interop_threads(1)
    except (ImportError, RuntimeError):  # absent, or the interop pool already started
        pass


def fma_peaks(dtypes):
    try:
        from rnncore.backends.cython import _probe
    except ImportError:
        return None, None
    return {d: _probe.fma_peak(d) for d in dtypes}, _probe.isa()


def worker(args):
    threads = args.threads[0]
    set_threads(threads)
    notes, rows = {}, []
    peaks_before, isa = fma_peaks(args.dtypes)
    with threadpool_limits(threads):
        if args.profile:
            from rnncore.backends.cython import _recurrent
            for dtype in args.dtypes:
                for case in case_list(args.cells, args.cases):
                    row = dict(zip(("name", "cell", "T", "B", "I", "H", "layers", "bidirectional"), case),
                               dtype=dtype, threads=threads)
                    row.update(profile_case(_recurrent, case, dtype))
                    rows.append(row)
                    print(f"{case_label(row)} {dtype}: " + ", ".join(
                        f"{k} {1e3 * row[k]:.3f}" for k in ("whole", "call", "pack", "projection", "product", "rest")),
                        flush=True)
        else:
            for dtype in args.dtypes:
                for case in case_list(args.cells, args.cases):
                    peers = checked(build_peers(case, dtype, threads, args, notes), dtype, case, notes)
                    samples = time_peers(peers, threads, args.rounds)
                    _, cell, T, B, I, H, layers, bidirectional = case
                    row = dict(name=case[0], cell=cell, T=T, B=B, I=I, H=H, layers=layers,
                               bidirectional=bidirectional, dtype=dtype, threads=threads,
                               flop=flops(T, B, I, H, GATES[cell], layers, 2 if bidirectional else 1),
                               times={f"{n}/{m}": statistics.median(v) for (n, m), v in samples.items()},
                               calls={f"{n}/{m}": len(v) for (n, m), v in samples.items()})
                    rows.append(row)
                    print(format_row(row, f"rnncore-{args.backends[0]}"), flush=True)
    peaks_after, _ = fma_peaks(args.dtypes)
    peaks = None if peaks_before is None else {d: max(peaks_before[d], peaks_after[d]) for d in args.dtypes}
    with open(args.worker_out, "w") as f:
        json.dump(dict(threads=threads, peaks=peaks, isa=isa, notes=notes, rows=rows, versions=versions()), f)


def versions():
    found = {}
    for module in ("numpy", "rnncore", "torch", "jax", "onnxruntime", "openvino"):
        try:
            found[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return found


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_workers(args):
    """Each thread count in a fresh process pinned to that many CPUs; their results merged."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    parts = []
    for threads in args.threads:
        out = os.path.join(tempfile.mkdtemp(), "part.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker-out", out, "--threads", str(threads),
                   "--rounds", str(args.rounds), "--dtypes", *args.dtypes, "--cells", *args.cells,
                   "--cases", *args.cases, "--backends", *args.backends, "--peers", *args.peers]
        if args.profile:
            command.append("--profile")
        env = dict(os.environ)
        if threads == 1:  # XLA sizes its pool once, at start-up
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                "intra_op_parallelism_threads=1").strip()
        cpus = set(allowed[:threads]) if allowed and len(allowed) >= threads else None
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        subprocess.run(command, env=env, preexec_fn=pin, check=True)
        with open(out) as f:
            parts.append(json.load(f))
    meta = dict(machine=platform.machine(), processor=cpu_name(), cpus=os.cpu_count(),
                python=platform.python_version(), versions=parts[0]["versions"], isa=parts[0]["isa"],
                peaks={str(p["threads"]): p["peaks"] for p in parts}, rounds=args.rounds,
                backends=args.backends, peers=args.peers,
                notes=dict(kv for p in parts for kv in p["notes"].items()))
    return meta, [row for p in parts for row in p["rows"]]


# -- reporting ----------------------------------------------------------------------------------

def peak_fraction(row, mode, meta, ours):
    t = row["times"].get(f"{ours}/{mode}")
    peaks = (meta.get("peaks") or {}).get(str(row["threads"]))
    if t is None or not peaks:
        return None
    work = row["flop"] * (3 if mode == "train" else 1)
    return work / t / 1e9 / (peaks[row["dtype"]] * row["threads"])


def fastest_peer(row, mode):
    found = [(row["times"][f"{p}/{mode}"], p) for p in PEERS if f"{p}/{mode}" in row["times"]]
    return min(found) if found else (None, None)


def ratio(row, peer, mode, ours):
    t, base = row["times"].get(f"{peer}/{mode}"), row["times"].get(f"{ours}/{mode}")
    return None if t is None or base is None else t / base


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def format_row(row, ours):
    parts = [f"{row['threads']}t {row['dtype']} {case_label(row):34s}"]
    for mode in ("infer", "train"):
        t = row["times"].get(f"{ours}/{mode}")
        best, peer = fastest_peer(row, mode)
        parts.append(f"{mode} {fmt(None if t is None else 1e3 * t, 3)} ms "
                     f"(x{fmt(None if best is None or t is None else best / t)} vs {LABELS.get(peer, peer)})")
    return "  ".join(parts)


def markdown(rows, meta, ours):
    others = [f"rnncore-{b}" for b in meta["backends"][1:] if f"rnncore-{b}" not in PEERS]
    v = meta["versions"]
    lines = [f"Machine: {meta['processor']}, {meta['cpus']} CPUs shared with other work (figures drift by up "
             f"to 2x; medians of interleaved rounds); the FMA probe runs {meta['isa']}. "
             + ", ".join(f"{k} {v[k]}" for k in sorted(v)) + ".", "",
             f"Ratios are peer time / {ours} time in the same process (> 1: rnncore is faster); 'vs fastest' "
             f"is against the fastest of the peers measured for that row. '% peak' is the FLOPs of the products "
             f"(2 T B G H (I + H) per layer and direction, x3 for training) per second over the single-core "
             f"FMA peak measured in the same run times the threads.", ""]
    peak_text = "; ".join(f"{t} thread(s): " + ", ".join(f"{d} {p:.1f}" for d, p in peaks.items())
                          for t, peaks in (meta.get("peaks") or {}).items() if peaks)
    if peak_text:
        lines += [f"Single-core FMA peak, GFLOP/s: {peak_text}.", ""]
    for threads in sorted({r["threads"] for r in rows}):
        for dtype in [d for d in DTYPES if any(r["dtype"] == d for r in rows)]:
            group = [r for r in rows if r["threads"] == threads and r["dtype"] == dtype]
            if not group:
                continue
            for mode, title in (("infer", "inference"), ("train", "training step")):
                peers = [p for p in PEERS if any(f"{p}/{mode}" in r["times"] for r in group)] + [
                    p for p in others if any(f"{p}/{mode}" in r["times"] for r in group)]
                head = ["case", f"{ours} ms", "% peak", "vs fastest"] + [LABELS.get(p, p) for p in peers]
                lines += [f"### {title}, {dtype}, {threads} thread{'s' if threads > 1 else ''}", "",
                          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                for r in group:
                    t = r["times"].get(f"{ours}/{mode}")
                    best, peer = fastest_peer(r, mode)
                    frac = peak_fraction(r, mode, meta, ours)
                    cells = [case_label(r), fmt(None if t is None else 1e3 * t, 3),
                             "–" if frac is None else f"{100 * frac:.0f}%",
                             "–" if best is None or t is None else f"{best / t:.2f} ({LABELS.get(peer, peer)})"]
                    cells += [fmt(ratio(r, p, mode, ours)) for p in peers]
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
    if meta["notes"]:
        lines += ["Left out:", ""] + [f"- {k}: {v}" for k, v in sorted(meta["notes"].items())]
    return "\n".join(lines) + "\n"


def plot(rows, meta, ours, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    threads = min(r["threads"] for r in rows)
    dtype = "float32" if any(r["dtype"] == "float32" for r in rows) else rows[0]["dtype"]
    group = [r for r in rows if r["threads"] == threads and r["dtype"] == dtype]
    labels = [case_label(r) for r in group]
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.32 * len(group) + 2.2), sharey=True)
    ypos = np.arange(len(group))
    for ax, mode in zip(axes, ("infer", "train")):
        peers = [p for p in PEERS + [f"rnncore-{b}" for b in meta["backends"][1:]]
                 if any(f"{p}/{mode}" in r["times"] for r in group) and p != ours]
        peers = list(dict.fromkeys(peers))
        height = 0.8 / max(len(peers), 1)
        for i, peer in enumerate(peers):
            ax.barh(ypos + i * height, [ratio(r, peer, mode, ours) or 0 for r in group], height=height,
                    label=LABELS.get(peer, peer), color=PEER_COLORS.get(peer))
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{'inference' if mode == 'infer' else 'training'}: peer time / rnncore time", fontsize=10)
        ax.legend(fontsize=7)
    ax = axes[2]
    for i, mode in enumerate(("infer", "train")):
        ax.barh(ypos + i * 0.4, [100 * (peak_fraction(r, mode, meta, ours) or 0) for r in group], height=0.4,
                label="inference" if mode == "infer" else "training", color=f"C{7 + i}")
    ax.set_xlim(0, 100)
    ax.set_title("rnncore, % of the measured FMA peak", fontsize=10)
    ax.legend(fontsize=7)
    axes[0].set_yticks(ypos + 0.3)
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{dtype}, {threads} thread{'s' if threads > 1 else ''}, {meta['processor']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_reports(meta, rows, out, ours):
    with open(os.path.join(out, "peers.json"), "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)
    table = markdown(rows, meta, ours)
    with open(os.path.join(out, "peers.md"), "w") as f:
        f.write(table)
    print(table)
    if not plot(rows, meta, ours, os.path.join(out, "peers.png")):
        print("matplotlib is not installed: no peers.png", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS)
    parser.add_argument("--cases", nargs="+", default=CASE_NAMES + [BIDIRECTIONAL],
                        choices=CASE_NAMES + [BIDIRECTIONAL])
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of interleaved blocks; a block is up to 5 calls of one peer (about "
                             f"{BLOCK_SECONDS} s), after one untimed call (the first after another peer is slow: cold caches)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="rnncore backends, the first is the one measured (default: the chosen one and the "
                             "NumPy reference; add numba to see it, it compiles for minutes the first time)")
    parser.add_argument("--peers", nargs="+", default=["onnxruntime", "openvino", "torch", "jax"])
    parser.add_argument("--quick", action="store_true", help="a smoke run: c1 LSTM, float32, 1 thread, 2 rounds")
    parser.add_argument("--profile", action="store_true", help="the breakdown of rnncore's calls, 1 thread")
    parser.add_argument("--report", action="store_true", help="write peers.md and peers.png again from peers.json")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        return worker(args)
    if args.report:
        with open(os.path.join(args.out, "peers.json")) as f:
            saved = json.load(f)
        return write_reports(saved["meta"], saved["results"], args.out, f"rnncore-{saved['meta']['backends'][0]}")
    if args.backends is None:
        args.backends = list(dict.fromkeys([rc.get_backend(), "numpy"]))
    if args.quick:  # a smoke run leaves the committed results alone
        args.threads, args.dtypes, args.cells, args.cases, args.rounds = [1], ["float32"], ["lstm"], ["c1"], 2
        args.out = args.out if args.out != RESULTS else os.path.join(tempfile.gettempdir(), "rnncore-bench-quick")
    if args.profile:
        args.threads, args.backends = [1], ["cython"]
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    meta, rows = run_workers(args)
    meta["seconds"] = round(time.perf_counter() - started)
    if args.profile:
        with open(os.path.join(args.out, "peers.profile.json"), "w") as f:
            json.dump(dict(meta=meta, results=rows), f, indent=1)
        text = profile_markdown(rows, meta)
        with open(os.path.join(args.out, "peers.profile.md"), "w") as f:
            f.write(text)
        print(text)
        return
    write_reports(meta, rows, args.out, f"rnncore-{args.backends[0]}")


if __name__ == "__main__":
    main()
