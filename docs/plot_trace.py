"""The gate trace of the demo's model (docs/trace.png): the recurrent forecaster of
`python -m rnncore demo`, fitted on the shipped Mauna Loa CO2 series with the demo's
defaults, reading the last window of the series; `LSTM.trace` gives its gates i, f, g, o
and cell state c at every step, one panel each, units down and steps across.

    python docs/plot_trace.py [--out docs/trace.png]
"""
import argparse
from pathlib import Path

import numpy as np

import rnncore as rc
from rnncore.app import demo


def main(out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = demo.build_parser().parse_args([])
    values, _, _, name = demo.load(args)
    chosen = {k: v for k, v in dict(window=args.window, horizon=args.horizon, epochs=args.epochs).items()
              if v is not None}
    model = rc.forecasting.Forecaster(cell=args.cell, season=12, hidden_size=args.hidden_size, seed=args.seed,
                                      ensemble=1, **chosen).fit(values[:, 0])
    network = model.networks_[0]
    lstm = network[0]
    end = np.array([len(model.history_)])
    x = model._inputs(model.history_, end)            # (window, 1, 1): the window the forecast reads
    trace = lstm.trace(x)["l0"]
    names = {"i": "input gate i", "f": "forget gate f", "g": "candidate g", "o": "output gate o",
             "c": "cell state c"}
    fig, axes = plt.subplots(1, 6, figsize=(15, 3.2), gridspec_kw=dict(width_ratios=[1.2, 1, 1, 1, 1, 1]))
    axes[0].plot(x[:, 0, 0], np.arange(len(x)), color="black")
    axes[0].invert_yaxis()
    axes[0].set_title("input (scaled level)")
    axes[0].set_ylabel("step of the window")
    for ax, key in zip(axes[1:], names):
        a = trace[key][:, 0, :]
        image = ax.imshow(a, aspect="auto", cmap="RdBu_r" if key in "gc" else "viridis",
                          vmin=-np.abs(a).max() if key in "gc" else 0, vmax=np.abs(a).max() if key in "gc" else 1)
        ax.set_title(names[key])
        ax.set_xlabel("unit")
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(f"LSTM.trace of the demo's forecaster ({name}), the window its last forecast reads")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("trace.png")))
    main(parser.parse_args().out)
