"""What one recurrent layer computes, independent of any backend.

A `CellSpec` fixes the cell type and its variant flags; from it follow the gate count,
the parameter names and shapes of one direction, and the shapes of the carried state.
Every backend and every layer object reads these facts from here, so they are written
once.
"""
from dataclasses import dataclass

KINDS = ("rnn", "lstm", "gru", "jordan")
ACTIVATIONS = ("tanh", "relu")
OUTPUT_ACTIVATIONS = ("identity", "tanh", "sigmoid")


@dataclass(frozen=True)
class CellSpec:
    kind: str                      # "rnn" | "lstm" | "gru" | "jordan"
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

    @property
    def num_gates(self):
        if self.kind == "lstm":
            return 3 if self.coupled_input_forget else 4
        return 3 if self.kind == "gru" else 1

    @property
    def out_size(self):
        """Width of the output y_t, which is also the fed-back state."""
        if self.kind == "jordan":
            return self.output_size
        if self.kind == "lstm" and self.proj_size:
            return self.proj_size
        return self.hidden_size

    @property
    def state_sizes(self):
        """Widths of the carried state: (h,) or, for LSTM, (h, c)."""
        if self.kind == "lstm":
            return (self.out_size, self.hidden_size)
        return (self.out_size,)

    def param_shapes(self):
        """Ordered {name: shape} of one direction, PyTorch's names without the suffix."""
        G, H, I = self.num_gates, self.hidden_size, self.input_size
        shapes = {"weight_ih": (G * H, I), "weight_hh": (G * H, self.out_size)}
        if self.bias:
            shapes["bias_ih"] = (G * H,)
            shapes["bias_hh"] = (G * H,)
        if self.kind == "lstm":
            if self.proj_size:
                shapes["weight_hr"] = (self.proj_size, H)
            if self.peephole:
                shapes["weight_ci"] = (H,)
                if not self.coupled_input_forget:
                    shapes["weight_cf"] = (H,)
                shapes["weight_co"] = (H,)
        if self.kind == "jordan":
            shapes["weight_ho"] = (self.output_size, H)
            if self.bias:
                shapes["bias_ho"] = (self.output_size,)
        return shapes
