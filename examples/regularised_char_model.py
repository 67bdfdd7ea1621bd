"""Zoneout and weight dropout against overfitting: a character-level LSTM on the verse
shipped with rnncore (rnncore/data/poems.txt, about 4000 characters), too large for its
data, trained with and without them.

Embedding -> LSTM(256) -> Linear, truncated BPTT over parallel streams of the first nine
tenths of the text, Adam; the held-out tenth is scored (bits per character) after every
epoch. The plain LSTM memorises its training text: its training loss keeps falling while
its held-out bits turn up after a few epochs. The same model with `weight_dropout`
(DropConnect on W_hh, AWD-LSTM) and `zoneout` (units keep their previous value at
random) cannot memorise as fast, and reaches lower held-out bits. Each model's figure is
its best epoch's held-out bits (what early stopping would keep); both runs use the same
seed, data and epochs.

    python examples/regularised_char_model.py [--quick]
"""
import argparse
import math
from pathlib import Path

import numpy as np

import rnncore as rc

TEXT = Path(rc.__file__).with_name("data") / "poems.txt"
STREAMS = 16
CHUNK = 32
HIDDEN = 256
REGULARISED = dict(weight_dropout=0.4, zoneout=0.2)


def bits_per_char(model, tokens):
    model.eval()
    logits, _ = model(tokens[:-1, None])
    model.train()
    return rc.CrossEntropyLoss()(logits, tokens[1:, None]) / math.log(2)


def train(tokens, held_out, vocab, epochs, seed, **options):
    """Held-out bits per character after each epoch, and the training loss (bits)."""
    steps = (len(tokens) - 1) // STREAMS
    inputs = tokens[:steps * STREAMS].reshape(STREAMS, steps).T
    targets = tokens[1:steps * STREAMS + 1].reshape(STREAMS, steps).T
    model = rc.Sequential(rc.Embedding(vocab, 32, seed=seed), rc.LSTM(32, HIDDEN, seed=seed + 1, **options),
                          rc.Linear(HIDDEN, vocab, seed=seed + 2))
    optimizer = rc.optim.Adam(model, lr=0.005)
    loss_fn = rc.CrossEntropyLoss()
    held, trained = [], []
    for _ in range(epochs):
        loss, _ = rc.train.truncated_bptt(model, loss_fn, optimizer, inputs, targets, CHUNK, max_norm=1.0)
        trained.append(loss / math.log(2))
        held.append(bits_per_char(model, held_out))
    return held, trained


def main(quick=False, seed=0, out=print):
    text = TEXT.read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    tokens = np.array([alphabet.index(ch) for ch in text])
    split = int(len(tokens) * 0.9)
    epochs = 25 if quick else 40
    plain_held, plain_train = train(tokens[:split], tokens[split:], len(alphabet), epochs, seed)
    reg_held, reg_train = train(tokens[:split], tokens[split:], len(alphabet), epochs, seed, **REGULARISED)
    options = ", ".join(f"{k}={v}" for k, v in REGULARISED.items())
    out(f"{epochs} epochs of a {HIDDEN}-unit LSTM over {split} characters")
    out(f"plain:       best held-out {min(plain_held):.3f} bits/char (epoch {int(np.argmin(plain_held)) + 1}), "
        f"last {plain_held[-1]:.3f}, training loss at the end {plain_train[-1]:.3f}")
    out(f"{options}: best held-out {min(reg_held):.3f} bits/char (epoch {int(np.argmin(reg_held)) + 1}), "
        f"last {reg_held[-1]:.3f}, training loss at the end {reg_train[-1]:.3f}")
    return {"metric": min(reg_held), "baseline": min(plain_held), "plain_last": plain_held[-1],
            "regularised_last": reg_held[-1]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are small: BLAS threads would only add overhead
    main(args.quick, args.seed)
