"""The cell vocabulary, written once: what one recurrent layer computes, independent of
any backend.

Here are the cell kinds, the activations, the gate blocks of each kind in the order the
weights hold them, the parameter names and shapes, the initialiser's bound, the
variant features a cell may use, and the integer codes the compiled kernels number kinds
and activations by. A `CellSpec` fixes one cell: its kind and variant flags, from which
follow its gates, its parameters and the shapes of the carried state. Layers, cells,
functional and the interchange formats read these facts from here. The backends may not
import core, so each keeps its own copy of the codes; tests/test_spec_vocabulary.py holds
every copy (Python, Cython, C and numba) to the ones below.
"""
import functools
import math
from dataclasses import astuple, dataclass

KINDS = ("rnn", "lstm", "gru", "jordan")
KIND_NAMES = {"rnn": "Elman RNN", "lstm": "LSTM", "gru": "GRU", "jordan": "Jordan RNN"}
ACTIVATIONS = ("tanh", "relu")                         # the hidden activation of rnn, jordan
OUTPUT_ACTIVATIONS = ("identity", "tanh", "sigmoid")   # the output activation of jordan

# The gate blocks of each kind, in the order the rows of weight_ih, weight_hh and the
# biases hold them (PyTorch's), each named by one letter whatever a library calls it:
# LSTM i, f, g (the cell candidate: Keras' and ONNX's "c"), o; GRU r, z, n (their "h");
# "a" is the single pre-activation of an Elman or Jordan RNN.
GATES = {"rnn": "a", "lstm": "ifgo", "gru": "rzn", "jordan": "a"}
# the coupled input-forget LSTM (CIFG) computes f = 1 - i, so f has no block
COUPLED_LSTM_GATES = "igo"

# The codes by which the compiled kernels tell kinds and activations apart (the Cython
# plan's `kind`, `act` and `out_act`, the C enum, numba's constants).
KIND_CODES = {"rnn": 0, "jordan": 1, "lstm": 2, "gru": 3}
ACTIVATION_CODES = {"identity": 0, "tanh": 1, "relu": 2, "sigmoid": 3}

# The variant features: what a cell computes beyond the plain form of its kind, each
# named by the constructor argument that turns it on, with what it adds (an interchange
# format refuses a cell using a feature it cannot express, and names it).
FEATURES = {
    "relu": "a ReLU hidden activation",
    "proj_size": "projection of the hidden state",
    "peephole": "peephole connections from the cell state to the gates",
    "coupled_input_forget": "coupled input and forget gates",
    "reset_after": "reset gate applied after the recurrent product",
    "layer_norm": "layer normalisation of the gate products and the cell state",
    "zoneout": "zoneout of the carried state",
    "recurrent_dropout": "dropout of the state entering the recurrent product",
    "weight_dropout": "dropout of the recurrent weights (DropConnect)",
}

# The regularised and normalised cells (API.md, "Regularised and normalised cells"):
# which kinds take each option. Layer norm is over the whole gate vector of a row, so
# the reset-before GRU cannot have it (its n block's product needs r, which needs the
# statistics of the whole vector).
REGULARISED_KINDS = {
    "layer_norm": ("lstm", "gru"),
    "zoneout": ("rnn", "lstm", "gru"),
    "recurrent_dropout": ("rnn", "lstm", "gru"),
    "weight_dropout": ("rnn", "lstm", "gru"),
}
LAYER_NORM_EPS = 1e-5    # LN(v; g, b) = g * (v - mean(v)) / sqrt(var(v) + eps) + b


def init_bound(hidden_size):
    """Every parameter is drawn from U(-bound, bound) with bound = 1/sqrt(hidden_size),
    as PyTorch initialises its recurrent layers."""
    return 1.0 / math.sqrt(hidden_size)


def layer_suffix(layer, direction):
    """The suffix of a stacked layer's parameter names, PyTorch's: `_l{layer}`, and
    `_reverse` for the second direction (weight_ih_l0, weight_hh_l1_reverse)."""
    return f"_l{layer}" + ("_reverse" if direction else "")


@dataclass(frozen=True)
class CellSpec:
    kind: str                      # one of KINDS
    input_size: int
    hidden_size: int
    bias: bool = True
    nonlinearity: str = "tanh"     # rnn, jordan hidden activation
    proj_size: int = 0             # lstm
    peephole: bool = False         # lstm
    coupled_input_forget: bool = False  # lstm (CIFG: f = 1 - i)
    reset_after: bool = True       # gru
    output_size: int = 0           # jordan
    output_activation: str = "identity"  # jordan
    # the regularised cells (REGULARISED_KINDS): all off by default
    layer_norm: bool = False       # lstm, gru (reset_after only)
    zoneout_h: float = 0.0         # the probability that a unit of h keeps its previous value
    zoneout_c: float = 0.0         # lstm: the same for c
    recurrent_dropout: float = 0.0  # dropout of h_{t-1} where it enters the recurrent product
    weight_dropout: float = 0.0    # DropConnect on W_hh; applied by the caller, backends see W_hh * M

    # A spec keys the backends' caches of plans and layouts, several lookups a call: its
    # hash (the generated one hashes all sixteen fields each time) and the facts derived
    # from its fields are computed once per spec. The hash depends on the process's
    # string hashing, so a pickle leaves it out.
    def __hash__(self):
        value = self.__dict__.get("_hash")
        if value is None:
            value = hash(astuple(self))
            object.__setattr__(self, "_hash", value)
        return value

    def __getstate__(self):
        return {name: value for name, value in self.__dict__.items() if name != "_hash"}

    @functools.cached_property
    def zoneout(self):
        """Whether either state is zoned out."""
        return self.zoneout_h > 0 or self.zoneout_c > 0

    @functools.cached_property
    def gates(self):
        """The letters of the gate blocks, in the order the weights' rows hold them."""
        if self.kind == "lstm" and self.coupled_input_forget:
            return COUPLED_LSTM_GATES
        return GATES[self.kind]

    @functools.cached_property
    def num_gates(self):
        return len(self.gates)

    @functools.cached_property
    def out_size(self):
        """Width of the output y_t, which is also the fed-back state."""
        if self.kind == "jordan":
            return self.output_size
        if self.kind == "lstm" and self.proj_size:
            return self.proj_size
        return self.hidden_size

    @functools.cached_property
    def state_sizes(self):
        """Widths of the carried state: (h,) or, for LSTM, (h, c)."""
        if self.kind == "lstm":
            return (self.out_size, self.hidden_size)
        return (self.out_size,)

    def features(self):
        """The names from FEATURES of what this cell computes beyond its kind's plain form."""
        lstm = self.kind == "lstm"
        used = {"relu": self.kind in ("rnn", "jordan") and self.nonlinearity == "relu",
                "proj_size": lstm and self.proj_size > 0,
                "peephole": lstm and self.peephole,
                "coupled_input_forget": lstm and self.coupled_input_forget,
                "reset_after": self.kind == "gru" and self.reset_after,
                "layer_norm": self.layer_norm,
                "zoneout": self.zoneout,
                "recurrent_dropout": self.recurrent_dropout > 0,
                "weight_dropout": self.weight_dropout > 0}
        return frozenset(name for name in FEATURES if used[name])

    def unsupported(self, expressible):
        """The features of this cell, in the order of FEATURES, outside `expressible` (the
        features a format can express for this kind); empty when the format carries it all."""
        used = self.features()
        return tuple(name for name in FEATURES if name in used and name not in expressible)

    def option(self, feature):
        """The constructor argument that turns `feature` on, as this cell sets it."""
        if feature == "relu":
            return f"nonlinearity={self.nonlinearity!r}"
        if feature == "zoneout":
            return f"zoneout={(self.zoneout_h, self.zoneout_c) if self.kind == 'lstm' else self.zoneout_h!r}"
        return f"{feature}={getattr(self, feature)!r}"

    def param_shapes(self):
        """Ordered {name: shape} of one direction, PyTorch's names without the suffix (the
        order is also that of the initialiser's draws)."""
        G, H, I = self.num_gates, self.hidden_size, self.input_size
        shapes = {"weight_ih": (G * H, I), "weight_hh": (G * H, self.out_size)}
        if self.bias:
            shapes["bias_ih"] = (G * H,)
            shapes["bias_hh"] = (G * H,)
        if self.kind == "lstm":
            if self.proj_size:
                shapes["weight_hr"] = (self.proj_size, H)
            if self.peephole:
                # one peephole weight per sigmoid gate, which reads the cell state
                shapes.update((f"weight_c{gate}", (H,)) for gate in self.gates if gate != "g")
        if self.kind == "jordan":
            shapes["weight_ho"] = (self.output_size, H)
            if self.bias:
                shapes["bias_ho"] = (self.output_size,)
        if self.layer_norm:
            # the gains of LN(W_ih x) and LN(W_hh h) (no shift: b_ih, b_hh are the shifts),
            # and the LSTM's gain and shift of LN(c_t)
            shapes["weight_ih_ln"] = (G * H,)
            shapes["weight_hh_ln"] = (G * H,)
            if self.kind == "lstm":
                shapes["weight_c_ln"] = (H,)
                shapes["bias_c_ln"] = (H,)
        return shapes

    def initial_value(self, name):
        """The value a parameter starts at when it is not drawn from U(-bound, bound): the
        layer norm's gains 1 and shift 0 (None for the drawn ones)."""
        if name.endswith("_ln"):
            return 0.0 if name.startswith("bias") else 1.0
        return None
