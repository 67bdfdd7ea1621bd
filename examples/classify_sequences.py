"""Sequence classification: does the pitch of a noisy, variable-length tone rise, fall
or stay?

Each sequence is a sine whose frequency sweeps up (0.05 -> 0.2 cycles per step), sweeps
down (0.2 -> 0.05) or holds one frequency in that range, plus noise, with a random phase
and length. A GRU reads each sequence (padded to a common length, with `lengths`),
`LastStep` picks each sequence's own last output, and a Linear layer gives the class
logits; trained with softmax cross-entropy, Adam, clipping, and early stopping on a
validation split. Metric: held-out accuracy, next to the majority class and to logistic
regression on the periodogram (the power spectrum of each sequence's valid part). The
periodogram solves "which frequency" outright, but a rising sweep and a falling one have
the same spectrum: only the order of events tells them apart, which is what the
recurrent model reads.

    python examples/classify_sequences.py [--quick]
"""
import argparse

import numpy as np

import rnncore as rc

CLASSES = ("rising", "falling", "steady")
LOW, HIGH = 0.05, 0.2   # cycles per step
MAX_LENGTH = 40


def make_set(rng, count):
    labels = rng.integers(0, len(CLASSES), count)
    lengths = rng.integers(MAX_LENGTH // 2, MAX_LENGTH + 1, count)
    steps = np.arange(MAX_LENGTH)[:, None]
    progress = np.minimum(steps / (lengths - 1), 1)          # 0 -> 1 over each sequence's own length
    steady = rng.uniform(LOW, HIGH, count)
    start = np.choose(labels, [LOW, HIGH, steady])
    end = np.choose(labels, [HIGH, LOW, steady])
    frequency = start + (end - start) * progress
    phase = 2 * np.pi * np.cumsum(frequency, axis=0) + rng.uniform(0, 2 * np.pi, count)
    x = np.sin(phase) + 0.5 * rng.standard_normal((MAX_LENGTH, count))
    x[steps >= lengths] = 0  # padding, never read thanks to lengths
    return x[..., None].astype(np.float32), labels, lengths


def periodogram(x, lengths):
    """Each sequence's normalised power spectrum (its valid part, zero-padded to 64 steps),
    with its peak and its entropy (a steady tone is peaked, a sweep spread out)."""
    features = []
    for b, length in enumerate(lengths):
        part = x[:length, b, 0] - x[:length, b, 0].mean()
        power = np.abs(np.fft.rfft(part, n=64)) ** 2
        power /= power.sum()
        entropy = -np.sum(power * np.log(power + 1e-12))
        features.append(np.concatenate([power, [power.max(), entropy]]))
    return np.array(features)


def logistic_regression(features, labels, classes, steps=500, lr=0.5, l2=1e-3):
    """Multinomial logistic regression by gradient descent on standardised features;
    returns a function from features to predicted classes."""
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-9
    x = (features - mean) / scale
    weights, bias = np.zeros((x.shape[1], classes)), np.zeros(classes)
    onehot = np.eye(classes)[labels]
    for _ in range(steps):
        logits = x @ weights + bias
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - onehot) / len(labels)
        weights -= lr * (x.T @ grad + l2 * weights)
        bias -= lr * grad.sum(axis=0)
    return lambda new: ((new - mean) / scale @ weights + bias).argmax(axis=1)


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
    model = rc.Sequential(rc.GRU(1, hidden, seed=seed), rc.LastStep(), rc.Linear(hidden, len(CLASSES), seed=seed + 1))
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
    majority = float(np.max(np.bincount(test[1])) / len(test[1]))
    classify = logistic_regression(periodogram(train[0], train[2]), train[1], len(CLASSES))
    spectral = float(np.mean(classify(periodogram(test[0], test[2])) == test[1]))
    out(f"{len(history)} epochs; held-out accuracy: GRU {test_accuracy:.3f}, logistic regression on the "
        f"periodogram {spectral:.3f}, most common class {majority:.3f}")
    return {"metric": test_accuracy, "baseline": spectral, "weakest_baseline": majority}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are tiny: BLAS threads would only add overhead
    main(args.quick, args.seed)
