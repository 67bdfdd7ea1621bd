"""Sequence classification: which of three frequencies is a noisy, variable-length sine?

A GRU reads each sequence (padded to a common length, with `lengths`), `LastStep` picks
each sequence's own last output, and a Linear layer gives the class logits; trained with
softmax cross-entropy, Adam, clipping, and early stopping on a validation split. Metric:
held-out accuracy, next to always guessing the most common class.

    python examples/classify_sequences.py [--quick]
"""
import argparse

import numpy as np

import rnncore as rc

FREQUENCIES = (0.05, 0.1, 0.2)   # cycles per step
MAX_LENGTH = 40


def make_set(rng, count):
    labels = rng.integers(0, len(FREQUENCIES), count)
    lengths = rng.integers(MAX_LENGTH // 2, MAX_LENGTH + 1, count)
    steps = np.arange(MAX_LENGTH)[:, None]
    phase = rng.uniform(0, 2 * np.pi, count)
    x = np.sin(2 * np.pi * np.asarray(FREQUENCIES)[labels] * steps + phase) + 0.5 * rng.standard_normal((MAX_LENGTH, count))
    x[steps >= lengths] = 0  # padding, never read thanks to lengths
    return x[..., None].astype(np.float32), labels, lengths


def accuracy(model, data):
    x, labels, lengths = data
    model.eval()
    logits, _ = model(x, lengths=lengths)
    model.train()
    return float(np.mean(logits.argmax(axis=-1) == labels))


def main(quick=False, seed=0, out=print):
    rng = np.random.default_rng(seed)
    train, valid, test = (make_set(rng, n) for n in (512, 256, 512))
    hidden = 24
    model = rc.Sequential(rc.GRU(1, hidden, seed=seed), rc.LastStep(), rc.Linear(hidden, len(FREQUENCIES), seed=seed + 1))
    optimizer = rc.optim.Adam(model, lr=0.01)
    loss_fn = rc.CrossEntropyLoss()

    def epoch(_):
        x, labels, lengths = train
        losses = []
        for batch in rc.train.minibatches(len(labels), 64, rng):
            loss, _ = rc.train.train_step(model, loss_fn, optimizer, x[:, batch], labels[batch],
                                          lengths=lengths[batch], max_norm=1.0)
            losses.append(loss)
        return np.mean(losses)

    stopper = rc.train.EarlyStopping(patience=3)
    history = rc.train.fit(epoch, 10 if quick else 30, validate=lambda: 1 - accuracy(model, valid), model=model,
                           early_stopping=stopper, progress=False)
    test_accuracy = accuracy(model, test)
    baseline = float(np.max(np.bincount(test[1])) / len(test[1]))
    out(f"{len(history)} epochs; held-out accuracy: GRU {test_accuracy:.3f}, most common class {baseline:.3f}")
    return {"metric": test_accuracy, "baseline": baseline}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are tiny: BLAS threads would only add overhead
    main(args.quick, args.seed)
