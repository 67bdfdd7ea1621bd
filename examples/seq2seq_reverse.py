"""Encoder-decoder: reverse sequences of digits of varying length.

The encoder LSTM reads the digits (3 to 8 of them, padded to 8 and read with `lengths`,
so its final (h, c) is each sequence's state after its own last digit); that state
initialises the decoder LSTM, which emits the digits in reverse order (trained with
teacher forcing, the padded positions ignored by the loss; decoded greedily). The
gradient of the decoder's initial state flows back into the encoder through
`encoder.backward(..., dstates=...)`. Metric: whole-sequence accuracy on held-out
sequences, next to copying the input unreversed and to position-wise logistic
regression on the one-hot digits and length. With one fixed length, reversal is a fixed
permutation of positions that the logistic regression learns exactly (it scores 1.000,
as the LSTM does); with varying lengths, which input position to copy depends on the
length, a product the linear model cannot form.

    python examples/seq2seq_reverse.py [--quick]
"""
import argparse

import numpy as np

import rnncore as rc

DIGITS = 6           # token ids 0..5 are digits
START = DIGITS       # the decoder's first input
PAD = DIGITS         # the encoder's padding (never read: lengths stop it)
SHORTEST, LONGEST = 3, 8
IGNORE = -100        # CrossEntropyLoss's ignore_index: padded targets count for nothing


def make_batch(rng, count):
    lengths = rng.integers(SHORTEST, LONGEST + 1, count)
    source = rng.integers(0, DIGITS, (LONGEST, count))
    valid = np.arange(LONGEST)[:, None] < lengths
    source[~valid] = PAD
    # target[i, b] = source[lengths[b] - 1 - i, b] for i < lengths[b]
    index = np.clip(lengths - 1 - np.arange(LONGEST)[:, None], 0, None)
    target = np.where(valid, np.take_along_axis(source, index, axis=0), IGNORE)
    decoder_input = np.concatenate([np.full((1, count), START), np.where(valid, target, 0)[:-1]])  # teacher forcing
    return source, lengths, decoder_input, target


def decode(encoder, decoder, source, lengths):
    """Greedy decoding from the encoder's final state, one step at a time."""
    encoder.eval(), decoder.eval()
    _, states = encoder(source, lengths=lengths)
    token = np.full((1, source.shape[1]), START)
    out = []
    for _ in range(LONGEST):
        logits, states = decoder(token, states)
        token = logits.argmax(axis=-1)
        out.append(token[0])
    encoder.train(), decoder.train()
    return np.stack(out)


def sequence_accuracy(predicted, target):
    return float(np.mean(np.all((predicted == target) | (target == IGNORE), axis=0)))


def one_hot_features(source, lengths):
    """(B, LONGEST * (DIGITS + 1) + LONGEST): each position's digit (or padding) and the length."""
    digits = np.eye(DIGITS + 1)[source.T].reshape(source.shape[1], -1)
    return np.concatenate([digits, np.eye(LONGEST)[lengths - 1]], axis=1)


def logistic_regression_baseline(rng, source, lengths, target, samples=4096, steps=300, lr=1.0):
    """One multinomial logistic regression per output position, on one_hot_features,
    fitted by gradient descent on `samples` fresh sequences; its predictions for the
    given sequences (LONGEST, B)."""
    train_source, train_lengths, _, train_target = make_batch(rng, samples)
    x, new = one_hot_features(train_source, train_lengths), one_hot_features(source, lengths)
    predicted = np.zeros_like(target)
    for i in range(LONGEST):
        keep = train_target[i] != IGNORE
        onehot = np.eye(DIGITS)[train_target[i, keep]]
        weights, bias = np.zeros((x.shape[1], DIGITS)), np.zeros(DIGITS)
        for _ in range(steps):
            logits = x[keep] @ weights + bias
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            grad = (probs - onehot) / keep.sum()
            weights -= lr * x[keep].T @ grad
            bias -= lr * grad.sum(axis=0)
        predicted[i] = (new @ weights + bias).argmax(axis=1)
    return predicted


def main(quick=False, seed=0, out=print):
    rng = np.random.default_rng(seed)
    hidden = 64
    encoder = rc.Sequential(rc.Embedding(DIGITS + 1, 16, seed=seed), rc.LSTM(16, hidden, seed=seed + 1))
    decoder = rc.Sequential(rc.Embedding(DIGITS + 1, 16, seed=seed + 2), rc.LSTM(16, hidden, seed=seed + 3),
                            rc.Linear(hidden, DIGITS, seed=seed + 4))
    optimizer = rc.optim.Adam([encoder, decoder], lr=0.01)
    loss_fn = rc.CrossEntropyLoss(ignore_index=IGNORE)
    steps = 500 if quick else 1200
    for _ in range(steps):
        source, lengths, decoder_input, target = make_batch(rng, 64)
        encoder.zero_grad(), decoder.zero_grad()
        encoder_out, states = encoder(source, lengths=lengths)
        logits, _ = decoder(decoder_input, states)
        loss_fn(logits, target)
        _, dstates = decoder.backward(loss_fn.backward())
        encoder.backward(np.zeros_like(encoder_out), dstates)
        rc.clip_grad_norm_([encoder, decoder], 1.0)
        optimizer.step()

    source, lengths, _, target = make_batch(np.random.default_rng(seed + 100), 500)
    predicted = decode(encoder, decoder, source, lengths)
    accuracy = sequence_accuracy(predicted, target)
    copying = sequence_accuracy(source, target)
    regression = sequence_accuracy(
        logistic_regression_baseline(np.random.default_rng(seed + 200), source, lengths, target), target)
    out(f"reversing {SHORTEST} to {LONGEST} digits, {steps} training batches")
    out(f"held-out sequence accuracy: seq2seq LSTM {accuracy:.3f}, position-wise logistic regression "
        f"{regression:.3f}, copying the input unreversed {copying:.3f}")
    length = lengths[0]
    example = " ".join(map(str, source[:length, 0])) + " -> " + " ".join(map(str, predicted[:length, 0]))
    out(f"example: {example}")
    return {"metric": accuracy, "baseline": regression, "weakest_baseline": copying}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are tiny: BLAS threads would only add overhead
    main(args.quick, args.seed)
