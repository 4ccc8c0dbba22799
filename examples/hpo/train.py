#!/usr/bin/env python3
"""A small real training for hyperparameter scans: an MLP on scikit-learn's digits, in JAX.

The learning rate and the hidden layer's width are the scanned parameters.
The 8x8 digit images ship inside scikit-learn, so nothing is downloaded. JAX
runs on a GPU when the image's JAX has CUDA and the job landed on a GPU node
(hpo-cuda image, ``--architecture nvidia-gpu``), on the CPU otherwise.
Writes ``metrics.json``: the validation loss (what the scan minimises), the
validation accuracy, the device and the training time.

    python train.py --lr 0.01 --width 64 [--epochs 60] [--layers 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, required=True, help="Adam learning rate")
    parser.add_argument("--width", type=int, required=True, help="units per hidden layer")
    parser.add_argument("--layers", type=int, default=1, help="hidden layers")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="metrics.json")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )

    sizes = [x.shape[1], *[args.width] * args.layers, 10]
    key = jax.random.PRNGKey(args.seed)
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        key, sub = jax.random.split(key)
        scale = jnp.sqrt(2.0 / n_in)
        params.append((jax.random.normal(sub, (n_in, n_out)) * scale, jnp.zeros(n_out)))

    def logits(p, inputs):
        h = inputs
        for w, b in p[:-1]:
            h = jax.nn.relu(h @ w + b)
        w, b = p[-1]
        return h @ w + b

    def loss_fn(p, inputs, labels):
        log_probs = jax.nn.log_softmax(logits(p, inputs))
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

    # Adam, written out: the image needs nothing beyond jax and scikit-learn
    b1, b2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def step(p, m, v, t, inputs, labels):
        grads = jax.grad(loss_fn)(p, inputs, labels)
        m = jax.tree_util.tree_map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
        mhat = jax.tree_util.tree_map(lambda a: a / (1 - b1**t), m)
        vhat = jax.tree_util.tree_map(lambda a: a / (1 - b2**t), v)
        p = jax.tree_util.tree_map(
            lambda w, a, c: w - args.lr * a / (jnp.sqrt(c) + eps), p, mhat, vhat
        )
        return p, m, v

    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    t = 0
    for _ in range(args.epochs):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), args.batch):
            t += 1
            batch = order[i : i + args.batch]
            params, m, v = step(params, m, v, t, x_train[batch], y_train[batch])
    val_loss = float(loss_fn(params, x_val, y_val))
    accuracy = float(jnp.mean(jnp.argmax(logits(params, x_val), axis=1) == y_val))
    elapsed = time.perf_counter() - started
    metrics = {
        "loss": val_loss if np.isfinite(val_loss) else 1e9,
        "accuracy": accuracy,
        "device": jax.devices()[0].platform,
        "train_time_s": round(elapsed, 3),
        "epochs": args.epochs,
    }
    with open(args.output, "w") as fh:
        json.dump(metrics, fh)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
