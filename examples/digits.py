"""Real training on real data: a 64-32-10 softmax network on scikit-learn's bundled 8x8 digits.

    pip install symbp[digits]          # scikit-learn (the data ships with it, no download)
                                       # and matplotlib (optional: the loss-curve plot)
    python examples/digits.py [--epochs 30] [--lr 0.1] [--batch 32] [--seed 0]
                              [--dtype float64] [--out DIR] [--plot digits_loss.png | --no-plot]

The network is examples/specs/digits_mlp.toml (64-32-10, tanh then softmax, cross-entropy,
mean over the batch). SymPy derives its backpropagation, symbp generates the Numba kernel, and
mini-batch SGD runs on that kernel (``symbp.train``). The 1797 images are split 75 / 25
into a training and a held-out test set, stratified by digit, with a fixed seed; each pixel is
standardized with the training set's mean and standard deviation. One line per epoch shows the
training loss and the train and test accuracy. The plot of the per-epoch loss is written when
matplotlib is installed and skipped (one line says so) otherwise.

Exit status 0 when the test accuracy reaches 95 %, 1 below, 2 when scikit-learn is missing.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import HERE
import symbp

TARGET = 0.95


def load_data(seed):
    """(X_train, X_test, y_train, y_test), standardized with the training set's statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0          # the corner pixels are 0 in every training image
    return (X_train - mean) / std, (X_test - mean) / std, y_train, y_test


def accuracy(kernel, params, X, y):
    return float(np.mean(np.argmax(kernel.forward(params, X), axis=1) == y))


def plot(losses, test_acc, path):
    """Loss curve (and test accuracy) to ``path``; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")       # files only, no display needed
    import matplotlib.pyplot as plt
    epochs = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, losses, color="C0", label="training loss (cross-entropy)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss per sample", color="C0")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(epochs, test_acc, color="C1", label="test accuracy")
    ax2.set_ylabel("test accuracy", color="C1")
    ax.set_title("64-32-10 tanh/softmax on the 8x8 digits, SGD on the symbp kernel", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--out", help="directory for the generated kernel (default: generated/)")
    ap.add_argument("--plot", default="digits_loss.png", help="where to save the loss curve")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    try:
        X_train, X_test, y_train, y_test = load_data(args.seed)
    except ImportError:
        print("digits.py needs scikit-learn (its 8x8 digits ship with it): pip install scikit-learn",
              file=sys.stderr)
        return 2
    print(f"8x8 digits: {len(y_train)} training and {len(y_test)} test images, pixels standardized")

    net = symbp.load(HERE / "specs" / "digits_mlp.toml")
    t = time.perf_counter()
    out = Path(args.out) if args.out else HERE.parent / "generated"
    k = symbp.generate(symbp.derive(net), dtype=args.dtype, out_dir=out).compile()
    print(f"{net}\n  derived, emitted to {k.path} and compiled in {time.perf_counter() - t:.1f} s")

    params = k.init_params(seed=args.seed)
    Y_train = symbp.one_hot(y_train, net.sizes[-1], dtype=k.dtype)
    X_train, X_test = X_train.astype(k.dtype), X_test.astype(k.dtype)
    losses, test_acc = [], []
    t = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        # One epoch per call, each with its own shuffle.
        losses += symbp.train(k, params, X_train, Y_train, lr=args.lr, epochs=1, batch_size=args.batch,
                        seed=args.seed * 100003 + epoch)
        test_acc.append(accuracy(k, params, X_test, y_test))
        print(f"epoch {epoch:3d}  loss {losses[-1]:.4f}  train accuracy "
              f"{accuracy(k, params, X_train, y_train):.4f}  test accuracy {test_acc[-1]:.4f}", flush=True)
    print(f"{args.epochs} epochs of SGD (batch {args.batch}, lr {args.lr}) in {time.perf_counter() - t:.2f} s")

    if not args.no_plot:
        if plot(losses, test_acc, args.plot):
            print(f"loss curve saved to {args.plot}")
        else:
            print("matplotlib not installed: no loss-curve plot (pip install matplotlib)")
    final = test_acc[-1]
    print(f"test accuracy {final:.4f} ({'reached' if final >= TARGET else 'BELOW'} the {TARGET:.0%} target)")
    return 0 if final >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
