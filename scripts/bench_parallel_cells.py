"""Training tokens/s of minGRU and minLSTM against an LSTM of the same parameter count, over
sequence lengths, and generation chars/s (docs/parallel_cells.md).

Training: a character LM step (embedding -> one-layer encoder -> linear -> cross-entropy ->
backward -> Adam) on batches of ``--tokens`` characters each (B = tokens / T rows of T), so
every length does the same work per step for a cell whose cost is per token. The cells run
alternately within each repetition, on the same batch; each figure is the median over the
repetitions, and each ratio the median of the per-repetition ratios (the machine is shared:
ratios, not absolute speeds, are what to read).

Generation: ``CharLanguageModel.generate_ids`` (prompt read once, then one step per char) with
untrained 2-layer models of the Tiny Shakespeare size (LSTM 2x512 and cells of its parameter
count).

    OMP_NUM_THREADS=1 python scripts/bench_parallel_cells.py
"""

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.data.vocab import Vocab
from seqmodels.models.charlm import CharLanguageModel
from seqmodels.models.encoder import RNNEncoder

VOCAB = 65


def encoder_parameters(cell: str, input_size: int, hidden: int, layers: int) -> int:
    return sum(p.numel() for p in RNNEncoder(input_size, hidden, cell=cell,
                                             num_layers=layers).parameters())


def matching_hidden(cell: str, input_size: int, target: int, layers: int) -> int:
    """The hidden size whose encoder parameter count is closest to ``target``."""
    low, high = 1, 8192
    while low < high:  # the count grows with the size: the first size at or above target
        mid = (low + high) // 2
        if encoder_parameters(cell, input_size, mid, layers) < target:
            low = mid + 1
        else:
            high = mid
    return min((low - 1, low), key=lambda h: abs(encoder_parameters(cell, input_size, h, layers)
                                                 - target))


class TinyLM(nn.Module):
    def __init__(self, cell: str, embedding: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, embedding)
        self.encoder = RNNEncoder(embedding, hidden, cell=cell)
        self.head = nn.Linear(hidden, VOCAB)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(self.embedding(tokens[:, :-1])).outputs)
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def train_step_seconds(model: TinyLM, optimizer, tokens: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model.loss(tokens).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def bench_training(args) -> None:
    target = encoder_parameters("lstm", args.embedding, args.hidden, 1)
    sizes = {"lstm": args.hidden, **{c: matching_hidden(c, args.embedding, target, 1)
                                     for c in ("mingru", "minlstm")}}
    print(f"training: one layer, embedding {args.embedding}, {args.tokens} tokens a batch, "
          f"Adam, {args.repeats} repetitions of {args.steps} steps")
    for cell, hidden in sizes.items():
        print(f"  {cell}: hidden {hidden}, encoder parameters "
              f"{encoder_parameters(cell, args.embedding, hidden, 1):,}")
    print("\n| T | B | LSTM tokens/s | minGRU tokens/s | minLSTM tokens/s | minGRU / LSTM | "
          "minLSTM / LSTM |\n|---:|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        torch.manual_seed(0)
        tokens = torch.randint(0, VOCAB, (batch, length + 1))
        models = {}
        for cell, hidden in sizes.items():
            model = TinyLM(cell, args.embedding, hidden)
            models[cell] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
            train_step_seconds(*models[cell], tokens, 1)  # warm-up
        seconds = {cell: [] for cell in sizes}
        for _ in range(args.repeats):
            for cell, (model, optimizer) in models.items():
                seconds[cell].append(train_step_seconds(model, optimizer, tokens, args.steps))
        speed = {c: batch * length / statistics.median(s) for c, s in seconds.items()}
        ratio = {c: statistics.median(a / b for a, b in zip(seconds["lstm"], seconds[c]))
                 for c in ("mingru", "minlstm")}
        print(f"| {length} | {batch} | {speed['lstm']:,.0f} | {speed['mingru']:,.0f} | "
              f"{speed['minlstm']:,.0f} | {ratio['mingru']:.2f}x | {ratio['minlstm']:.2f}x |",
              flush=True)


def bench_generation(args) -> None:
    target = encoder_parameters("lstm", 64, 512, 2)
    sizes = {"lstm": 512, **{c: matching_hidden(c, 64, target, 2) for c in ("mingru", "minlstm")}}
    vocab = Vocab(["<pad>", "<unk>", *(chr(33 + i) for i in range(VOCAB - 2))])
    print(f"\ngeneration: 2 layers, embedding 64, {args.chars} chars after a 1-char prompt, "
          f"median of {args.repeats}\n\n| cell | hidden | encoder parameters | chars/s |\n"
          "|---|---:|---:|---:|")
    for cell, hidden in sizes.items():
        torch.manual_seed(0)
        model = CharLanguageModel(VOCAB, {"cell": cell, "hidden_size": hidden, "num_layers": 2},
                                  embedding_dim=64)
        model.vocabs = {"chars": vocab}
        list(model.generate_ids([2], 50, seed=0))  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            list(model.generate_ids([2], args.chars, temperature=0.8, seed=0))
            times.append(time.perf_counter() - start)
        print(f"| {cell} | {hidden} | {encoder_parameters(cell, 64, hidden, 2):,} | "
              f"{args.chars / statistics.median(times):,.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512, 2048])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens a training batch")
    parser.add_argument("--embedding", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256, help="the LSTM's hidden size")
    parser.add_argument("--steps", type=int, default=2, help="training steps a repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chars", type=int, default=2000, help="generated chars a repetition")
    parser.add_argument("--sections", nargs="+", default=["training", "generation"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d %H:%M')}")
    if "training" in args.sections:
        bench_training(args)
    if "generation" in args.sections:
        bench_generation(args)


if __name__ == "__main__":
    main()
