"""Train a small numpy MLP on handwritten digits, logging Keras-style epoch lines to stderr.

Runs as a Batch AI job: reads IDX-format MNIST from ``$AZ_BATCHAI_INPUT_DATASET`` when present,
otherwise the 8x8 digits bundled with scikit-learn (no network), and writes ``model.npz`` and
``metrics.json`` to ``$AZ_BATCHAI_OUTPUT_MODEL`` (or ``./outputs``).

Exit codes: 0 success, 1 failure, 2 bad arguments, 143 terminated by SIGTERM.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

log = logging.getLogger("train")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143, what a shell reports for a SIGTERM'd process
VAL_FRACTION = 0.2


class UsageError(Exception):
    """Bad command-line argument (exit 2)."""


class Terminated(Exception):
    """Raised from the SIGTERM handler so the training loop unwinds cleanly."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage plus the error; the job's stderr wants a single line.
        raise UsageError(message)


# --------------------------------------------------------------------------- arguments


def _number(
    kind: type[int] | type[float], minimum: float, *, inclusive: bool
) -> Callable[[str], int | float]:
    """argparse type: a finite int/float above (or at) ``minimum``, with a readable error."""

    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        ok = value >= minimum if inclusive else value > minimum
        if not ok or not np.isfinite(value):
            bound = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {bound} {minimum:g}, got {text!r}")
        return value

    return convert


_positive_int = _number(int, 0, inclusive=False)
_non_negative_int = _number(int, 0, inclusive=True)
_positive_float = _number(float, 0, inclusive=False)
_non_negative_float = _number(float, 0, inclusive=True)


def _default_data_dir() -> str | None:
    env = os.environ.get("AZ_BATCHAI_INPUT_DATASET")
    return env if env and Path(env).is_dir() else None


def _default_output_dir() -> str:
    return os.environ.get("AZ_BATCHAI_OUTPUT_MODEL") or "./outputs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=_positive_int, default=10)
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--lr", type=_positive_float, default=0.1, help="SGD learning rate")
    parser.add_argument(
        "--hidden", type=_non_negative_int, default=64, help="hidden units (0: softmax regression)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir",
        default=_default_data_dir(),
        help="directory with MNIST IDX files (default: $AZ_BATCHAI_INPUT_DATASET if present)",
    )
    parser.add_argument(
        "--output-dir",
        default=_default_output_dir(),
        help="where model.npz and metrics.json go (default: $AZ_BATCHAI_OUTPUT_MODEL or ./outputs)",
    )
    parser.add_argument(
        "--sleep-per-epoch",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="pause after each epoch, to watch log streaming",
    )
    args = parser.parse_args(argv)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir: not a directory: {args.data_dir}")
    return args


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # float32 (n, features), scaled to [0, 1]
    y_train: np.ndarray  # int64 (n,)
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), as in http://yann.lecun.com/exdb/mnist/."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=header)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find_idx(data_dir: Path, prefix: str, kind: str) -> Path | None:
    # Both the original names (train-images-idx3-ubyte) and the common dotted variant.
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            candidate = data_dir / f"{prefix}{sep}{kind}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _split(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = rng.permutation(len(x))
    n_val = max(1, int(round(len(x) * VAL_FRACTION)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def load_mnist(data_dir: Path, rng: np.random.Generator) -> Dataset | None:
    train_images = _find_idx(data_dir, "train", "images-idx3-ubyte")
    train_labels = _find_idx(data_dir, "train", "labels-idx1-ubyte")
    if train_images is None or train_labels is None:
        return None
    x = read_idx(train_images)
    y = read_idx(train_labels)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} training images but {len(y)} labels")
    x = x.reshape(len(x), -1).astype(np.float32) / 255.0
    y = y.astype(np.int64)
    test_images = _find_idx(data_dir, "t10k", "images-idx3-ubyte")
    test_labels = _find_idx(data_dir, "t10k", "labels-idx1-ubyte")
    if test_images is not None and test_labels is not None:
        x_val = read_idx(test_images).reshape(-1, x.shape[1]).astype(np.float32) / 255.0
        y_val = read_idx(test_labels).astype(np.int64)
        x_train, y_train = x, y
    else:
        x_train, y_train, x_val, y_val = _split(x, y, rng)
    n_classes = int(max(y_train.max(), y_val.max())) + 1
    return Dataset(f"mnist-idx:{data_dir}", x_train, y_train, x_val, y_val, n_classes)


def load_digits(rng: np.random.Generator) -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits  # slow import; only when needed

    bunch = sk_load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_train, y_train, x_val, y_val = _split(x, y, rng)
    return Dataset("sklearn-digits-8x8", x_train, y_train, x_val, y_val, 10)


def load_dataset(data_dir: str | None, rng: np.random.Generator) -> Dataset:
    if data_dir is not None:
        dataset = load_mnist(Path(data_dir), rng)
        if dataset is not None:
            return dataset
        log.info("No MNIST IDX files in %s; falling back to sklearn digits", data_dir)
    return load_digits(rng)


# --------------------------------------------------------------------------- model


class MLP:
    """Softmax classifier with an optional ReLU hidden layer, trained by plain mini-batch SGD."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, rng: np.random.Generator) -> None:
        sizes = [n_in, n_hidden, n_out] if n_hidden else [n_in, n_out]
        self.params: dict[str, np.ndarray] = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            scale = np.sqrt(2.0 / fan_in)  # He initialisation for ReLU
            self.params[f"W{i}"] = (rng.standard_normal((fan_in, fan_out)) * scale).astype(
                np.float32
            )
            self.params[f"b{i}"] = np.zeros(fan_out, dtype=np.float32)
        self.n_layers = len(sizes) - 1

    def _forward(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        activations = [x]
        h = x
        for i in range(1, self.n_layers + 1):
            z = h @ self.params[f"W{i}"] + self.params[f"b{i}"]
            h = np.maximum(z, 0.0) if i < self.n_layers else z
            activations.append(h)
        logits = activations.pop()
        z = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(z)
        return activations, exp / exp.sum(axis=1, keepdims=True)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)[1]

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, float]:
        """One SGD step on a batch; returns (mean loss, accuracy) before the update."""
        activations, probs = self._forward(x)
        loss, acc = _loss_acc(probs, y)
        grad = probs.copy()
        grad[np.arange(len(y)), y] -= 1.0
        grad /= len(y)
        for i in range(self.n_layers, 0, -1):
            h = activations[i - 1]
            w = self.params[f"W{i}"]
            grad_w = h.T @ grad
            grad_b = grad.sum(axis=0)
            if i > 1:
                grad = (grad @ w.T) * (h > 0)
            self.params[f"W{i}"] -= lr * grad_w
            self.params[f"b{i}"] -= lr * grad_b
        return loss, acc


def _loss_acc(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    picked = probs[np.arange(len(y)), y]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    acc = float((probs.argmax(axis=1) == y).mean())
    return loss, acc


# --------------------------------------------------------------------------- training


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a temp file + rename so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def train(args: argparse.Namespace) -> dict[str, object]:
    out_dir = Path(os.path.abspath(args.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)  # fail before training, not after
    rng = np.random.default_rng(args.seed)
    data = load_dataset(args.data_dir, rng)
    n_features = data.x_train.shape[1]
    log.info(
        "Dataset %s: %d train / %d validation samples, %d features, %d classes",
        data.name,
        len(data.x_train),
        len(data.x_val),
        n_features,
        data.n_classes,
    )
    log.info(
        "Training %s for %d epochs: batch_size=%d lr=%g seed=%d",
        f"MLP (hidden={args.hidden})" if args.hidden else "softmax regression",
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
    )
    model = MLP(n_features, args.hidden, data.n_classes, rng)
    history: list[dict[str, float]] = []
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(data.x_train))
        loss_sum = acc_sum = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            loss, acc = model.train_step(data.x_train[batch], data.y_train[batch], args.lr)
            loss_sum += loss * len(batch)
            acc_sum += acc * len(batch)
        val_loss, val_acc = _loss_acc(model.predict_proba(data.x_val), data.y_val)
        row = {
            "epoch": epoch,
            "loss": loss_sum / len(order),
            "acc": acc_sum / len(order),
            "val_loss": val_loss,
            "val_acc": val_acc,
        }
        if not np.isfinite(row["loss"]):
            raise FloatingPointError(f"loss diverged at epoch {epoch}; try a smaller --lr")
        history.append(row)
        log.info(
            "Epoch %d/%d - loss: %.4f - acc: %.4f - val_loss: %.4f - val_acc: %.4f",
            epoch,
            args.epochs,
            row["loss"],
            row["acc"],
            row["val_loss"],
            row["val_acc"],
        )
        if args.sleep_per_epoch:
            time.sleep(args.sleep_per_epoch)
    elapsed = time.monotonic() - started

    model_path = out_dir / "model.npz"
    _atomic_write(
        model_path,
        lambda fh: np.savez(fh, **model.params, n_classes=np.int64(data.n_classes)),
    )
    metrics = {
        "dataset": data.name,
        "train_samples": len(data.x_train),
        "val_samples": len(data.x_val),
        "params": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "hidden": args.hidden,
            "seed": args.seed,
        },
        "history": history,
        "train_seconds": round(elapsed, 3),
    }
    metrics_path = out_dir / "metrics.json"
    _atomic_write(metrics_path, lambda fh: fh.write(json.dumps(metrics, indent=2).encode()))
    size = model_path.stat().st_size
    log.info("Saved model to %s (%d bytes)", model_path, size)
    final = history[-1]
    return {
        "status": "succeeded",
        "dataset": data.name,
        "epochs": args.epochs,
        "loss": round(final["loss"], 4),
        "acc": round(final["acc"], 4),
        "val_loss": round(final["val_loss"], 4),
        "val_acc": round(final["val_acc"], 4),
        "model": str(model_path),
        "model_bytes": size,
        "metrics": str(metrics_path),
        "train_seconds": round(elapsed, 3),
    }


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = parse_args(argv)
        summary = train(args)
    except UsageError as exc:
        log.error("train.py: error: %s", exc)
        return EXIT_USAGE
    except Terminated:
        log.error("Training terminated by SIGTERM")
        return EXIT_SIGTERM
    except Exception as exc:
        message = " ".join(str(exc).split()) or "(no message)"
        log.error("train.py: error: %s: %s", type(exc).__name__, message)
        return EXIT_FAILURE
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
