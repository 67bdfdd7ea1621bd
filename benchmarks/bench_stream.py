"""Streaming inference, one step per call: `stream.step` against its peers, one thread.

For each case (cell, I, H, B), float32, every peer advances one step at a time with its
state carried, and each step is timed on its own (the call included); the median and
the 99th percentile are taken per round, the peers interleaved in rounds (their order
rotated), and the medians across rounds quoted. Rows:

- rnncore: `stream.step(x_t, out=buf)` (the headline), `stream.step(x_t)` (a new y_t each
  step), `stream.step(x_t, out=buf, check_finite=False)`, the compiled loop alone
  (`stream._stack.run(x3, out3, True)`, no Python wrapper), and the layer call with the
  state carried, `layer(x[None], state)` (0.1.0's way);
- peers: a torch `LSTMCell`/`GRUCell`/`RNNCell` loop, torch `nn.LSTM/GRU/RNN` called with
  T=1 and the state carried (both under no_grad, the rnncore layer's weights), ONNX
  Runtime `session.run` with T=1 and the state fed back, on the graph `rc.onnx.export(...,
  initial_state=True)` writes and on the bare operator node alone (the same weights).

Every peer is first checked against the layer's full-sequence output (rnncore's rows
bitwise, the others to float32 rounding). Then `rc.train.generate` of 1000 characters
with examples/char_generation.py's architecture (random weights) against the same
generation by calling the model once per token with its states carried, here and, when
a 0.1.0 build is given (--v010), 0.1.0's own `generate` in a subprocess (same weights,
same tokens).

    python benchmarks/bench_stream.py                     # full run
    python benchmarks/bench_stream.py --quick             # seconds
    python benchmarks/bench_stream.py --cells lstm --sizes 8x32 --batches 1
    python benchmarks/bench_stream.py --v010 /tmp/v010/src   # with 0.1.0's generate

Writes benchmarks/results/stream.json and stream.md.
"""
import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from functools import partial
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import rnncore as rc

CELLS = ("lstm", "gru", "rnn")
SIZES = ((8, 32), (64, 256), (512, 512))
BATCHES = (1, 16)
LAYERS = {"lstm": rc.LSTM, "gru": rc.GRU, "rnn": rc.RNN}
POOL = 16  # distinct inputs cycled through, so no peer sees one x_t over and over
HEADLINE = "stream.step(out=)"
RNNCORE_ROWS = (HEADLINE, "stream.step()", "step(check_finite=False)", "_stack.run", "layer(x[None], state)")
PEER_ROWS = ("torch cell loop", "torch T=1", "ORT export", "ORT node")
RESULTS = Path(__file__).with_name("results")


# -- the steppers ----------------------------------------------------------------------
#
# Each maker returns (step, reset, inputs): step(x) advances one step and returns y_t as
# its library gives it; reset() puts the state back to zeros; inputs, the POOL inputs in
# the form step takes (made once: building them is not part of a step).

def rnncore_steppers(layer, xs):
    B, H = xs[0].shape[0], layer.hidden_size
    made = {}

    def stream_maker(**options):
        stream = layer.stream(batch_size=B)
        buf = np.empty((B, H), np.float32)
        step = partial(stream.step, **{k: (buf if v == "buf" else v) for k, v in options.items()})
        return step, stream.reset, xs

    made[HEADLINE] = stream_maker(out="buf")
    made["stream.step()"] = stream_maker()
    made["step(check_finite=False)"] = stream_maker(out="buf", check_finite=False)

    # the compiled loop alone: what stream.step hands its (1, B, I) and (1, B, H) views to
    stream = layer.stream(batch_size=B)
    out3 = np.empty((1, B, H), np.float32)
    run = stream._stack.run

    def stack_step(x3):
        run(x3, out3, True)
        return out3[0]
    made["_stack.run"] = (stack_step, stream.reset, [x[None] for x in xs])

    evaluated = layer.eval()
    carried = [None]

    def layer_step(x3):
        y, carried[0] = evaluated(x3, carried[0])
        return y[0]
    made["layer(x[None], state)"] = (layer_step, lambda: carried.__setitem__(0, None), [x[None] for x in xs])
    return made


def torch_steppers(torch, cell, layer, xs):
    B, H = xs[0].shape[0], layer.hidden_size
    lstm = cell == "lstm"
    weights = {k: torch.from_numpy(v.copy()) for k, v in layer.state_dict().items()}
    cell_module = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[cell](
        layer.input_size, H)
    cell_module.load_state_dict({k[:-len("_l0")]: v for k, v in weights.items()})
    seq_module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](layer.input_size, H)
    seq_module.load_state_dict(weights)
    # the state starts at zeros; both torch steppers keep it in a one-element list
    cell_state, seq_state = [None], [None]

    def zeros(rows_first):
        h = torch.zeros((1, B, H) if rows_first else (B, H))
        return (h, torch.zeros_like(h)) if lstm else h

    def reset():
        cell_state[0], seq_state[0] = zeros(False), zeros(True)
    reset()

    def cell_step(x):
        cell_state[0] = state = cell_module(x, cell_state[0])
        return state[0] if lstm else state

    def seq_step(x3):
        y, seq_state[0] = seq_module(x3, seq_state[0])
        return y[0]

    tensors = [torch.from_numpy(x) for x in xs]
    return {"torch cell loop": (cell_step, reset, tensors),
            "torch T=1": (seq_step, reset, [t[None] for t in tensors])}


def ort_steppers(ort, onnx, cell, layer, xs):
    B, H = xs[0].shape[0], layer.hidden_size
    lstm = cell == "lstm"
    exported = rc.onnx.export(layer, io.BytesIO(), initial_state=True)
    # the operator node alone: the exported node's weights and attributes, state in and out
    graph = exported.graph
    node = next(n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN"))
    initializers = {t.name: t for t in graph.initializer}
    helper, TensorProto = onnx.helper, onnx.TensorProto
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, B, layer.input_size])]
    states = ["h0", "c0"] if lstm else ["h0"]
    inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, B, H]) for s in states]
    weights = [name for name in node.input[1:4] if name]
    operands = ["x"] + weights + ([""] * (4 - len(weights))) + states
    finals = ["h_n", "c_n"] if lstm else ["h_n"]
    bare = helper.make_node(node.op_type, operands, ["Y"] + finals)
    bare.attribute.extend(node.attribute)
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, B, H])]
    outputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, B, H]) for s in finals]
    single = helper.make_model(helper.make_graph([bare], "step", inputs, outputs,
                                                 [initializers[name] for name in weights]),
                               opset_imports=list(exported.opset_import))
    single.ir_version = exported.ir_version
    onnx.checker.check_model(single, full_check=True)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    made = {}
    for name, proto, y_name in (("ORT export", exported, "y"), ("ORT node", single, "Y")):
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        run = partial(session.run, [y_name] + finals)
        feed = {}

        def reset(feed=feed):
            for s in states:
                feed[s] = np.zeros((1, B, H), np.float32)

        def step(x3, feed=feed, run=run):
            feed["x"] = x3
            found = run(feed)
            for s, value in zip(states, found[1:]):
                feed[s] = value
            return found[0].reshape(B, H)
        reset()
        made[name] = (step, reset, [x[None] for x in xs])
    return made


def check(name, stepper, layer, xs, exact):
    """The stepper's outputs over the POOL inputs from zeros equal the layer's
    full-sequence output: bitwise for rnncore, else to float32 rounding."""
    step, reset, inputs = stepper
    reset()
    # copies: out= buffers are reused
    got = np.stack([np.asarray(step(x)).copy() for x in inputs]).reshape(len(xs), *xs[0].shape[:1], -1)
    want, _ = layer.eval()(np.stack(xs))
    reset()
    if exact:
        ok = np.array_equal(got, want)
    else:
        # float32 sums in another order: a few ulps of the outputs (|y| < 1)
        ok = np.allclose(got, want, rtol=1e-4, atol=2e-5)
    if not ok:
        raise AssertionError(f"{name}: steps differ from the layer's output by {np.max(np.abs(got - want)):.3g}")


# -- timing ----------------------------------------------------------------------------

def time_steps(step, inputs, count):
    """Per-step times (ns) of `count` steps, each timed on its own."""
    clock = time.perf_counter_ns
    times = [0] * count
    pool = len(inputs)
    for k in range(count):
        x = inputs[k % pool]
        start = clock()
        step(x)
        times[k] = clock() - start
    return times


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def measure(steppers, rounds, budget, warmup, least):
    """Per stepper: the per-round medians and p99s (us) of per-step times, the steppers
    interleaved in rounds (order rotated), each warmed up before its round; a round of a
    stepper takes about `budget` seconds, and at least `least` steps."""
    names = list(steppers)
    counts = {}
    for name in names:
        step, _, inputs = steppers[name]
        time_steps(step, inputs, warmup)
        probe = statistics.median(time_steps(step, inputs, 50)) * 1e-9
        counts[name] = int(min(max(budget / probe, least), 20000))
    found = {name: {"median": [], "p99": []} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, _, inputs = steppers[name]
            time_steps(step, inputs, warmup)
            times = time_steps(step, inputs, counts[name])
            found[name]["median"].append(percentile(times, 50) / 1e3)
            found[name]["p99"].append(percentile(times, 99) / 1e3)
    return {name: {"median_us": statistics.median(v["median"]), "p99_us": statistics.median(v["p99"]),
                   "round_medians_us": v["median"], "steps_per_round": counts[name]}
            for name, v in found.items()}


def bench_case(cell, I, H, B, args, torch, ort, onnx):
    layer = LAYERS[cell](I, H, dtype=np.float32, seed=0)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((B, I), dtype=np.float32) for _ in range(POOL)]
    steppers = rnncore_steppers(layer, xs)
    for name, stepper in steppers.items():
        check(name, stepper, layer, xs, exact=True)
    peers = {}
    if torch is not None:
        peers.update(torch_steppers(torch, cell, layer, xs))
    if ort is not None:
        peers.update(ort_steppers(ort, onnx, cell, layer, xs))
    for name, stepper in peers.items():
        check(name, stepper, layer, xs, exact=False)
    steppers.update(peers)
    rows = measure(steppers, args.rounds, args.budget, args.warmup, args.least)
    fastest = min((n for n in PEER_ROWS if n in rows), key=lambda n: rows[n]["median_us"], default=None)
    result = {"cell": cell, "I": I, "H": H, "B": B, "rows": rows, "fastest_peer": fastest}
    if fastest is not None:
        result["ratio"] = rows[fastest]["median_us"] / rows[HEADLINE]["median_us"]
    return result


# -- where a step's time goes --------------------------------------------------------

def profile(repeat):
    """LSTM(8, 32) B=1: the mean time per call (us, best of `repeat` runs of many calls)
    of stream.step's pieces: the timer loop's own cost, the compiled run, the view
    reshapes and the allocation the wrapper makes, and the whole calls."""
    layer = rc.LSTM(8, 32, dtype=np.float32, seed=0)
    stream = layer.stream(batch_size=1)
    x = np.random.default_rng(1).standard_normal((1, 8), dtype=np.float32)
    buf, x3, out3 = np.empty((1, 32), np.float32), x[None], np.empty((1, 1, 32), np.float32)
    run, step = stream._stack.run, stream.step
    pieces = {
        "empty call (timing floor)": lambda: None,
        "_stack.run(x3, out3, True)": lambda: run(x3, out3, True),
        "_stack.run(x3, out3, False)": lambda: run(x3, out3, False),
        "x_t.reshape(1, 1, 8)": lambda: x.reshape(1, 1, 8),
        "np.empty((1, 32), float32)": lambda: np.empty((1, 32), np.float32),
        "fast-path check (type, dtype, shape, flags)": lambda: (type(x) is np.ndarray and x.dtype is stream.dtype
                                                                and x.shape == (1, 8) and x.flags.c_contiguous),
        "stream.step(x, out=buf)": lambda: step(x, out=buf),
        "stream.step(x, out=buf, check_finite=False)": lambda: step(x, out=buf, check_finite=False),
        "stream.step(x)": lambda: step(x),
        "layer(x[None], state)": None,
    }
    evaluated, carried = layer.eval(), [None]

    def layer_step():
        y, carried[0] = evaluated(x3, carried[0])
    pieces["layer(x[None], state)"] = layer_step
    found = {}
    for name, fn in pieces.items():
        number = 20000 if name != "layer(x[None], state)" else 2000
        found[name] = min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
    return found


# -- generation ------------------------------------------------------------------------

GENERATE_LENGTH = 1000
PROMPT = "Shall I "


def char_model():
    """examples/char_generation.py's model (Embedding -> LSTM(32, 128) -> Linear), its
    alphabet from the text it trains on, with random weights."""
    text = (Path(rc.__file__).with_name("data") / "poems.txt").read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    vocab = len(alphabet)
    model = rc.Sequential(rc.Embedding(vocab, 32, seed=0), rc.LSTM(32, 128, seed=1), rc.Linear(128, vocab, seed=2))
    return model, np.array([alphabet.index(ch) for ch in PROMPT])


def generate_by_calls(model, prompt, length, temperature, seed):
    """Generation as 0.1.0 did it: the model called on each token, its states carried."""
    rng = np.random.default_rng(seed)
    model.eval()
    logits, states = model(prompt[:, None])
    tokens = np.empty(length, dtype=np.int64)
    for step in range(length):
        last = logits[-1, 0].astype(np.float64)
        scaled = (last - last.max()) / temperature
        probs = np.exp(scaled)
        token = int(rng.choice(len(probs), p=probs / probs.sum()))
        tokens[step] = token
        logits, states = model(np.array([[token]]), states)
    return tokens


def generate_lean(model, prompt, length, temperature, seed):
    """The same generation as a lean loop over the LSTM's stream: the embedding row
    copied into a buffer, the stream stepping into its output, the logits into theirs,
    and the draw rng.choice makes (the inverse of the cumulative probabilities at one
    uniform number) without rng.choice's checks: what generate could cost per token."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    table, w_out, b_out = state["0.weight"], state["2.weight"].T.copy(), state["2.bias"]
    stream = model.modules[1].stream(batch_size=1)
    h = stream(table[prompt][:, None])[-1]
    x = np.empty((1, table.shape[1]), np.float32)
    logits = np.empty((1, w_out.shape[1]), np.float32)
    tokens = np.empty(length, dtype=np.int64)
    for step in range(length):
        np.dot(h, w_out, out=logits)
        logits += b_out
        last = logits[0].astype(np.float64)
        probs = np.exp((last - last.max()) / temperature)
        cdf = (probs / probs.sum()).cumsum()
        cdf /= cdf[-1]
        token = int(cdf.searchsorted(rng.random(), side="right"))
        tokens[step] = token
        x[0] = table[token]
        stream.step(x, out=h)
    return tokens


# the 0.1.0 side, run in a subprocess with 0.1.0 first on sys.path: its own generate
V010_SCRIPT = """
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
import rnncore as rc
rc.set_num_threads(1)
weights, repeats = sys.argv[1], int(sys.argv[2])
saved = np.load(weights)
vocab = saved["vocab"].item()
model = rc.Sequential(rc.Embedding(vocab, 32, seed=0), rc.LSTM(32, 128, seed=1), rc.Linear(128, vocab, seed=2))
model.load_state_dict({k: saved[k] for k in saved.files if k not in ("vocab", "prompt")})
times = []
with threadpool_limits(1):
    rc.train.generate(model, saved["prompt"], 20, temperature=0.6, seed=0)
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = rc.train.generate(model, saved["prompt"], %d, temperature=0.6, seed=0)
        times.append(time.perf_counter() - start)
print(json.dumps({"version": rc.__version__, "file": rc.__file__, "times_s": times, "tokens": tokens.tolist()}))
""" % GENERATE_LENGTH


def bench_generate(rounds, v010):
    model, prompt = char_model()
    generate = partial(rc.train.generate, model, prompt, GENERATE_LENGTH, temperature=0.6, seed=0)
    by_calls = partial(generate_by_calls, model, prompt, GENERATE_LENGTH, 0.6, 0)
    lean = partial(generate_lean, model, prompt, GENERATE_LENGTH, 0.6, 0)
    tokens = generate()
    for name, fn in (("the per-token calls", by_calls), ("the lean loop", lean)):
        if not np.array_equal(tokens, fn()):
            raise AssertionError(f"generate: the stream's tokens differ from {name}'")
    weights = None
    if v010:
        weights = os.path.join(tempfile.mkdtemp(), "char_model.npz")
        state = model.state_dict()
        np.savez(weights, vocab=np.array(state["0.weight"].shape[0]), prompt=prompt, **state)
    times = {"rc.train.generate (streams)": [], "model called per token": [],
             "lean loop over the LSTM's stream": [], "0.1.0 rc.train.generate": []}
    v010_info = None
    for _ in range(rounds):
        for name, fn in (("rc.train.generate (streams)", generate), ("model called per token", by_calls),
                         ("lean loop over the LSTM's stream", lean)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        if weights:
            env = dict(os.environ, PYTHONPATH=v010)
            done = subprocess.run([sys.executable, "-c", V010_SCRIPT, weights, "1"], capture_output=True,
                                  text=True, env=env, cwd=tempfile.gettempdir())
            if done.returncode:
                raise RuntimeError(f"0.1.0 generate failed:\n{done.stderr}")
            v010_info = json.loads(done.stdout)
            times["0.1.0 rc.train.generate"].extend(v010_info["times_s"])
    result = {"length": GENERATE_LENGTH, "times_ms": {k: statistics.median(v) * 1e3 for k, v in times.items() if v},
              "round_times_ms": {k: [t * 1e3 for t in v] for k, v in times.items() if v}}
    if v010_info is not None:
        result["v010_file"] = v010_info["file"]
        result["v010_same_tokens"] = v010_info["tokens"] == tokens.tolist()
        result["speedup_vs_v010"] = result["times_ms"]["0.1.0 rc.train.generate"] / \
            result["times_ms"]["rc.train.generate (streams)"]
        result["lean_speedup_vs_v010"] = result["times_ms"]["0.1.0 rc.train.generate"] / \
            result["times_ms"]["lean loop over the LSTM's stream"]
    result["speedup_vs_calls"] = result["times_ms"]["model called per token"] / \
        result["times_ms"]["rc.train.generate (streams)"]
    return result


# -- report ----------------------------------------------------------------------------

def targets(cases, generation):
    """The issue's targets, each with the figure it is judged on."""
    found = []
    by_case = {(c["cell"], c["I"], c["H"], c["B"]): c for c in cases}
    for cell in CELLS:
        for (I, H), limit_us, factor, against in (((8, 32), 3.0, 3.0, ("torch cell loop", "ORT export", "ORT node")),
                                                  ((512, 512), 250.0, 1.2, None)):
            case = by_case.get((cell, I, H, 1))
            if case is None:
                continue
            rows = case["rows"]
            step = rows[HEADLINE]["median_us"]
            found.append({"target": f"{cell.upper()}({I}, {H}) B=1: a step at most {limit_us:g} us",
                          "figure": f"{step:.2f} us", "met": step <= limit_us})
            peers = [n for n in (against or [case.get("fastest_peer")]) if n in rows]
            for peer in peers:
                ratio = rows[peer]["median_us"] / step
                found.append({"target": f"{cell.upper()}({I}, {H}) B=1: at least {factor:g}x {peer}",
                              "figure": f"{ratio:.2f}x", "met": ratio >= factor})
    if generation and "speedup_vs_v010" in generation:
        found.append({"target": f"generate {GENERATE_LENGTH} chars at least 5x faster than 0.1.0",
                      "figure": f"{generation['speedup_vs_v010']:.2f}x", "met": generation["speedup_vs_v010"] >= 5})
    return found


def cell_text(row):
    return f"{row['median_us']:.2f} / {row['p99_us']:.1f}" if row else "-"


def markdown(report):
    lines = ["# Streaming inference: per-step latency", "",
             f"{report['machine']}; one thread everywhere; float32. Each step timed on its own, the call "
             "included; `median / p99` in us, the medians across rounds of each round's median and p99. "
             "Ratio: the fastest peer's median over `stream.step(out=)`'s.", "",
             f"Noise: {report['noise']}", ""]
    columns = list(RNNCORE_ROWS) + list(PEER_ROWS)
    lines.append("| case | " + " | ".join(f"`{c}`" if c in RNNCORE_ROWS else c for c in columns)
                 + " | fastest peer | ratio |")
    lines.append("|---" * (len(columns) + 3) + "|")
    for case in report["cases"]:
        rows = case["rows"]
        name = f"{case['cell'].upper()}({case['I']}, {case['H']}) B={case['B']}"
        cells = [cell_text(rows.get(c)) for c in columns]
        ratio = f"{case['ratio']:.2f}x" if "ratio" in case else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {case.get('fastest_peer') or '-'} | {ratio} |")
    if report.get("profile"):
        lines += ["", "## Where a step of LSTM(8, 32) B=1 goes", "",
                  "Mean per call, best of several runs of many calls (timeit):", "",
                  "| piece | us |", "|---|---|"]
        lines += [f"| {name} | {us:.3f} |" for name, us in report["profile"].items()]
    generation = report.get("generation")
    if generation:
        lines += ["", f"## Generating {generation['length']} characters (examples/char_generation.py's model)", "",
                  "| way | ms (median) |", "|---|---|"]
        lines += [f"| {name} | {ms:.1f} |" for name, ms in generation["times_ms"].items()]
        lines.append("")
        lines.append(f"Streams against calling the model per token (this version): "
                     f"{generation['speedup_vs_calls']:.2f}x.")
        if "speedup_vs_v010" in generation:
            lines.append(f"Against 0.1.0's own generate (same weights; same tokens: "
                         f"{generation['v010_same_tokens']}): {generation['speedup_vs_v010']:.2f}x; the lean loop "
                         f"(same tokens), {generation['lean_speedup_vs_v010']:.2f}x.")
    if report.get("targets"):
        lines += ["", "## Targets", "", "| target | figure | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['figure']} | {'yes' if t['met'] else 'no'} |" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def noise_note(cases, load_before, load_after):
    spreads = [max(c["rows"][HEADLINE]["round_medians_us"]) / min(c["rows"][HEADLINE]["round_medians_us"])
               for c in cases]
    return (f"load average {load_before:.2f} before, {load_after:.2f} after; across rounds, the headline row's "
            f"slowest round median over its fastest is {statistics.median(spreads):.2f} in the median case, "
            f"{max(spreads):.2f} at worst.")


def parse_size(text):
    I, H = text.lower().split("x")
    return int(I), int(H)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds: few rounds, short ones")
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=list(SIZES), help="IxH, e.g. 8x32")
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--v010", default=None, help="the src/ folder of a built 0.1.0 checkout, for its generate")
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument("--out", default=str(RESULTS), help="where stream.json and stream.md go")
    args = parser.parse_args(argv)
    args.rounds = 3 if args.quick else 9
    args.budget = 0.004 if args.quick else 0.06  # seconds of steps per peer and round
    args.warmup = 10 if args.quick else 100
    args.least = 30 if args.quick else 200  # steps per round: p99 needs a few hundred

    try:
        import torch
        torch.set_num_threads(1)
        torch.set_grad_enabled(False)  # every torch step runs as under torch.no_grad()
    except ImportError:
        torch = None
        print("torch unavailable: its rows are left out", file=sys.stderr)
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        ort = onnx = None
        print("onnx/onnxruntime unavailable: their rows are left out", file=sys.stderr)
    rc.set_num_threads(1)

    load_before = os.getloadavg()[0]
    cases = []
    with threadpool_limits(1):
        for cell in args.cells:
            for I, H in args.sizes:
                for B in args.batches:
                    case = bench_case(cell, I, H, B, args, torch, ort, onnx)
                    cases.append(case)
                    rows = case["rows"]
                    peer = case.get("fastest_peer")
                    print(f"{cell}({I}, {H}) B={B}: step {cell_text(rows[HEADLINE])} us, "
                          f"{peer} {cell_text(rows.get(peer))} us, ratio {case.get('ratio', float('nan')):.2f}",
                          flush=True)
        prof = profile(3 if args.quick else 7)
        generation = None if args.no_generate else bench_generate(2 if args.quick else 7, args.v010)
    load_after = os.getloadavg()[0]

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"Python {platform.python_version()}, numpy {np.__version__}"
                         + (f", torch {torch.__version__}" if torch else "")
                         + (f", onnxruntime {ort.__version__}" if ort else ""),
              "quick": args.quick, "rounds": args.rounds, "cases": cases, "profile": prof,
              "generation": generation}
    report["noise"] = noise_note(cases, load_before, load_after)
    report["targets"] = targets(cases, generation)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "stream.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
