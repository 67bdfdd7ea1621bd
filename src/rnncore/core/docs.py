"""The numpydoc entries several docstrings share, written once and filled in where
they are used."""


def filled(table):
    """A decorator filling the `%(name)s` entries of a docstring from `table`."""
    def fill(documented):
        documented.__doc__ = documented.__doc__ % table
        return documented
    return fill


# The parameter entries the layers' docstrings share, filled in by `shared_docs`
PARAMETER_DOCS = {
    'input_size': 'input_size : int\n        Features per step of the input, I.',
    'hidden_size': 'hidden_size : int\n        Units of the hidden state, H.',
    'num_layers': "num_layers : int, default 1\n        Layers stacked, each reading the previous one's output.",
    'bias': 'bias : bool, default True\n        Whether the layer has the biases `bias_ih_l{k}`, `bias_hh_l{k}`.',
    'batch_first': 'batch_first : bool, default False\n        Whether batched input and output are (B, T, features) instead of (T, B, features).',
    'dropout': 'dropout : float in [0, 1], default 0.0\n        Dropout on the output of every layer but the last, in training mode only.',
    'bidirectional': "bidirectional : bool, default False\n        Whether each layer also runs backwards in time, its output concatenated after\n        the forward one's.",
    'dtype': 'dtype : np.float32 or np.float64, default np.float32\n        The dtype of the parameters, and the one inputs must have.',
    'seed': 'seed : int, optional\n        Seeds the initialisation, U(-1/sqrt(H), 1/sqrt(H)), and the dropout masks.',
    'backend': 'backend : str, optional\n        "cython", "numba" or "numpy"; None follows `rnncore.set_backend`.',
    'layer_norm': 'layer_norm : bool, default False, keyword-only\n        Layer-normalised cell (Ba et al. 2016, haste\'s placement): LN of W_ih x and of\n        W_hh h over the whole gate vector, gains `weight_ih_ln_l{k}`, `weight_hh_ln_l{k}`\n        (start at 1); the LSTM also normalises c_t before tanh, gain `weight_c_ln_l{k}`\n        and shift `bias_c_ln_l{k}` (start at 1 and 0).',
    'zoneout': 'zoneout : float in [0, 1], default 0.0, keyword-only\n        Zoneout (Krueger et al. 2017): in training each unit keeps its previous value\n        with probability p (masks per step and unit); in evaluation\n        h_t = p h_{t-1} + (1 - p) h~_t.',
    'zoneout_lstm': 'zoneout : float or (float, float) in [0, 1], default 0.0, keyword-only\n        Zoneout (Krueger et al. 2017) of h and c, one p for both or (p_h, p_c): in\n        training each unit keeps its previous value with probability p (masks per step\n        and unit); in evaluation h_t = p h_{t-1} + (1 - p) h~_t, c likewise.',
    'recurrent_dropout': 'recurrent_dropout : float in [0, 1), default 0.0, keyword-only\n        Variational dropout (Gal and Ghahramani 2016) of the state entering the\n        recurrent product, one mask per sequence and layer for all steps, inverted\n        scaling; training only.',
    'weight_dropout': 'weight_dropout : float in [0, 1), default 0.0, keyword-only\n        DropConnect on W_hh (AWD-LSTM), one mask per forward call, inverted scaling;\n        training only. The gradient flows to the kept weights.',
    'raises': 'Raises\n    ------\n    ValueError, TypeError\n        A size, option or dtype out of range, naming the argument.',
}


def shared_docs(cls):
    """Fill the `%(name)s` entries of `cls`'s docstring from `PARAMETER_DOCS`."""
    cls.__doc__ = cls.__doc__ % PARAMETER_DOCS
    return cls
