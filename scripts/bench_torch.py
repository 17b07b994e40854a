#!/usr/bin/env python
"""Side by side: hogwild_mts.TorchEngine vs the standard PyTorch Hogwild recipe, one run.

The recipe (pytorch/examples mnist_hogwild): torch.multiprocessing with spawn, ``model.share_memory()``,
a private ``optim.SGD`` per process, ``torch.set_num_threads(1)``.  Both sides get the same network
(same initial weights), the same training images in shared memory, the same shard split (worker w
owns rows w, w+m, ...), batch size, epochs, step size and a warm-up forward/backward before the
clock starts.  Samples/s = samples / (last worker's end - first worker's start).  The runs alternate
ours/theirs ``--repeats`` times; the table shows the median and the best (least disturbed) run.

    python scripts/bench_torch.py --workers 2 --epochs 10 --batch-size 16 --lr 0.05 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hogwild_mts.data.images import load_images  # noqa: E402
from hogwild_mts.engines.networks import TorchEngine  # noqa: E402
from hogwild_mts.models.nets import build_network  # noqa: E402


def recipe_worker(rank, model, images, labels, args, seed, ready, go, results):
    """One process of the PyTorch Hogwild recipe (its own SGD optimizer over the shared model)."""
    torch.set_num_threads(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    shard = np.arange(rank, images.shape[0], args.workers, dtype=np.int64)
    rng = np.random.default_rng(seed)
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(images[torch.from_numpy(shard[:args.batch_size])]),
                    labels[torch.from_numpy(shard[:args.batch_size])]).backward()  # warm-up
    optimizer.zero_grad()
    ready.release()
    go.wait()
    start, samples = time.time(), 0
    for _ in range(args.epochs):
        order = torch.from_numpy(rng.permutation(shard))
        for first in range(0, order.shape[0], args.batch_size):
            rows = order[first:first + args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images[rows]), labels[rows])
            loss.backward()
            optimizer.step()
            samples += rows.shape[0]
    results.put((start, time.time(), samples))


def run_recipe(args, dataset):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_network(args.model, dataset.input_shape, dataset.n_classes)
    model.share_memory()
    images = torch.from_numpy(dataset.train_images).share_memory_()
    labels = torch.from_numpy(dataset.train_labels).share_memory_()
    context = mp.get_context("spawn")
    ready, go, results = context.Semaphore(0), context.Event(), context.SimpleQueue()
    seeds = np.random.SeedSequence(args.seed).spawn(args.workers)
    processes = [context.Process(target=recipe_worker, args=(rank, model, images, labels, args,
                                                             seeds[rank], ready, go, results))
                 for rank in range(args.workers)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.acquire()
    go.set()
    runs = [results.get() for _ in processes]
    for process in processes:
        process.join()
    seconds = max(end for _, end, _ in runs) - min(start for start, _, _ in runs)
    samples = sum(n for _, _, n in runs)
    with torch.no_grad():
        logits = model(torch.from_numpy(dataset.test_images))
    accuracy = float((logits.argmax(1) == torch.from_numpy(dataset.test_labels)).float().mean())
    return samples / seconds, accuracy


def run_ours(args, dataset):
    engine = TorchEngine(args.model, "constant", lr=args.lr, workers=args.workers, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, progress=False, eval_every=3600.0,
                         split="static")  # the same shard split as the PyTorch recipe
    result = engine.fit(dataset)
    return result.samples_per_second, result.final_accuracy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn", "lenet"))
    parser.add_argument("--data", default="digits", help="image data spec (default digits)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    dataset = load_images(args.data)
    ours, theirs = [], []
    for repeat in range(args.repeats):
        ours.append(run_ours(args, dataset))
        theirs.append(run_recipe(args, dataset))
        print(f"repeat {repeat + 1}: ours {ours[-1][0]:,.0f} samples/s acc {ours[-1][1]:.4f} | "
              f"recipe {theirs[-1][0]:,.0f} samples/s acc {theirs[-1][1]:.4f}", file=sys.stderr)
    rate_ours, rate_theirs = (statistics.median(r for r, _ in runs) for runs in (ours, theirs))
    best_ours, best_theirs = (max(r for r, _ in runs) for runs in (ours, theirs))
    acc_ours, acc_theirs = (statistics.median(a for _, a in runs) for runs in (ours, theirs))
    print(f"\n{args.model} on {dataset.name}, {args.workers} workers, batch {args.batch_size}, "
          f"{args.epochs} epochs, lr {args.lr}, {args.repeats} alternating repeats ({os.cpu_count()} CPUs)")
    print("| engine | samples/s (median) | samples/s (best) | test accuracy (median) |\n|---|---:|---:|---:|")
    print(f"| hogwild_mts TorchEngine | {rate_ours:,.0f} | {best_ours:,.0f} | {acc_ours:.4f} |")
    print(f"| PyTorch Hogwild recipe | {rate_theirs:,.0f} | {best_theirs:,.0f} | {acc_theirs:.4f} |")
    print(f"| ratio ours/theirs | {rate_ours / rate_theirs:.2f}x | {best_ours / best_theirs:.2f}x | "
          f"{100 * (acc_ours - acc_theirs):+.2f} points |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
