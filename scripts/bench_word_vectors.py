"""How long reading a pretrained vectors file takes: the first read (parse the text) and a rerun
(the cache), as ``seqmodels-train`` does them (``seqmodels.data.word_vectors``).

    python scripts/bench_word_vectors.py ../shared/data/glove/glove.6B.50d.txt.gz --repeats 3

Each first read goes to a fresh cache directory, so nothing is cached before it; the cached
loads reuse the last one. Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from seqmodels.data.word_vectors import load_word_vectors


def timed_load(path: Path, cache: Path):
    """Seconds to load ``path`` until its numbers can be used (every row touched once)."""
    start = time.perf_counter()
    vectors = load_word_vectors(path, cache)
    float(vectors.vectors.sum())
    return time.perf_counter() - start, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    first, cached = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            cache = Path(scratch) / f"cache{repeat}"
            seconds, vectors = timed_load(args.path, cache)
            first.append(seconds)
        for _ in range(args.repeats):
            seconds, again = timed_load(args.path, cache)
            cached.append(seconds)
        assert again.words == vectors.words and torch.equal(again.vectors, vectors.vectors)
        cache_size = sum(f.stat().st_size for f in cache.iterdir())

    rows, dim = vectors.vectors.shape
    print(f"{args.path.name}: {rows:,} words x {dim}, {args.path.stat().st_size / 1e6:.1f} MB "
          f"on disk; cache {cache_size / 1e6:.1f} MB")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}\n")
    print("| load | median s | min s | max s |")
    print("| --- | ---: | ---: | ---: |")
    for name, times in (("first read (text, no cache)", first), ("rerun (cache)", cached)):
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | "
              f"{max(times):.3f} |")


if __name__ == "__main__":
    main()
