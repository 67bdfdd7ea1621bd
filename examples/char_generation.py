"""Character-level language model on public-domain verse shipped with rnncore
(Shakespeare's sonnets and Blake's "The Tyger", rnncore/data/poems.txt).

Embedding -> LSTM -> Linear, trained by truncated BPTT: the text is cut into parallel
streams read in chunks, each chunk starting from the state the previous one ended in.
Metric: bits per character on a held-out stretch of the text, next to the unigram
baseline (the entropy of the character frequencies) and smoothed bigram and trigram
models (the next character's frequency after the one or two before it, interpolated
with the lower orders; the weights chosen on the end of the training text). The LSTM's
size and learning rate, and its epoch count, were chosen the same way: trained on the
first nine tenths of the training text, scored on the last tenth. Then it writes some verse, sampling
one character at a time with the state carried along.

    python examples/char_generation.py [--quick] [--temperature 0.6]
"""
import argparse
import math
from pathlib import Path

import numpy as np

import rnncore as rc

TEXT = Path(rc.__file__).with_name("data") / "poems.txt"
STREAMS = 16
CHUNK = 32


def bits_per_char(model, tokens):
    model.eval()
    logits, _ = model(tokens[:-1, None])
    model.train()
    return rc.CrossEntropyLoss()(logits, tokens[1:, None]) / math.log(2)


def ngram_bits(train, held_out, vocab, order):
    """Bits per character of an interpolated n-gram model: the next character's
    probability is w_1 P(c) + w_2 P(c | prev) + ... + w_order P(c | the order-1 before),
    each P a frequency in `train` (P(c) add-one smoothed), the weights chosen on a grid
    by their bits on the last tenth of `train`, the frequencies then counted on all of it."""
    def frequencies(tokens):
        tables = [(np.bincount(tokens, minlength=vocab) + 1) / (len(tokens) + vocab)]
        for n in range(2, order + 1):
            counts = np.zeros((vocab,) * n)
            np.add.at(counts, tuple(tokens[k:len(tokens) - n + 1 + k] for k in range(n)), 1)
            tables.append(counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1))
        return tables

    def bits(tables, weights, tokens):
        context = order - 1
        probs = sum(w * table[tuple(tokens[context - n + 1 + k:len(tokens) - n + 1 + k] for k in range(n))]
                    for n, (w, table) in enumerate(zip(weights, tables), start=1))
        return float(-np.mean(np.log2(probs)))

    grid = [w for w in np.ndindex(*(10,) * (order - 1)) if sum(w) < 10]
    weights = [np.r_[10 - sum(w), w] / 10 for w in grid]
    cut = int(len(train) * 0.9)
    tables = frequencies(train[:cut])
    best = min(weights, key=lambda w: bits(tables, w, train[cut:]))
    return bits(frequencies(train), best, held_out)


def main(quick=False, seed=0, temperature=0.6, out=print):
    text = TEXT.read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    tokens = np.array([alphabet.index(ch) for ch in text])
    split = int(len(tokens) * 0.9)
    train, held_out = tokens[:split], tokens[split:]
    # the training text as STREAMS parallel streams, time-major (T, STREAMS)
    steps = (len(train) - 1) // STREAMS
    inputs = train[:steps * STREAMS].reshape(STREAMS, steps).T
    targets = train[1:steps * STREAMS + 1].reshape(STREAMS, steps).T

    vocab = len(alphabet)
    model = rc.Sequential(rc.Embedding(vocab, 32, seed=seed), rc.LSTM(32, 128, seed=seed + 1),
                          rc.Linear(128, vocab, seed=seed + 2))
    optimizer = rc.optim.Adam(model, lr=0.005)
    loss_fn = rc.CrossEntropyLoss()
    epochs = 12 if quick else 20
    history = rc.train.fit(lambda _: rc.train.truncated_bptt(model, loss_fn, optimizer, inputs, targets, CHUNK,
                                                              max_norm=1.0)[0],
                           epochs, progress=not quick, desc="char LSTM")

    counts = np.bincount(train, minlength=vocab) + 1  # add-one: every character has some probability
    probs = counts / counts.sum()
    unigram = float(-np.mean(np.log2(probs[held_out])))
    model_bits = bits_per_char(model, held_out)
    out(f"{len(history)} epochs over {len(train)} characters, alphabet of {vocab}")
    bigram, trigram = (ngram_bits(train, held_out, vocab, order) for order in (2, 3))
    out(f"held-out bits per character: LSTM {model_bits:.3f}, smoothed trigram {trigram:.3f}, smoothed bigram "
        f"{bigram:.3f}, unigram frequencies {unigram:.3f}")
    prompt = np.array([alphabet.index(ch) for ch in "Shall I "])
    sample = rc.train.generate(model, prompt, 240, temperature=temperature, seed=seed)
    out("sample (temperature %.2g):\n%s" % (temperature, "Shall I " + "".join(alphabet[t] for t in sample)))
    return {"metric": model_bits, "baseline": trigram, "bigram": bigram, "weakest_baseline": unigram}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.6, help="0: greedy")
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are tiny: BLAS threads would only add overhead
    main(args.quick, args.seed, args.temperature)
