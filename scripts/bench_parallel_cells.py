"""Training tokens/s of minGRU and minLSTM against an LSTM (cuDNN's on a GPU), over sequence
lengths and dtypes, peak memory per token on CUDA, and generation chars/s on the CPU
(docs/parallel_cells.md, issue 24).

Training: a character LM step (embedding -> one-layer encoder -> linear -> cross-entropy ->
backward -> Adam) on batches of ``--tokens`` characters each (B = tokens / T rows of T), so
every length does the same work per step for a cell whose cost is per token. The cells run at
the LSTM's parameter count (equal parameters) and minGRU also at the LSTM's hidden size (equal
hidden). ``--dtype bf16`` runs the step under bf16 autocast. All models run alternately within
each repetition, on the same batch; each figure is the median over the repetitions, each ratio
the median of per-repetition ratios. On CUDA the minimum over the steps is synchronized, and
the peak memory of one training step (beyond the weights, the optimizer state and the batch)
is reported per token at T = 2048.

The training section imports only torch and seqmodels' encoder (no Hydra, no Lightning; the
generation section needs Lightning). One command for the GPU table:

    python scripts/bench_parallel_cells.py --device cuda

and the CPU table of docs/parallel_cells.md:

    OMP_NUM_THREADS=1 python scripts/bench_parallel_cells.py --tokens 4096 --steps 1 --chars 1000
"""

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.models import scan_triton
from seqmodels.models.encoder import RNNEncoder
from seqmodels.models.parallel_cells import PARALLEL_CELLS, SCAN_BACKENDS, coefficients
from seqmodels.models.scan import linear_scan

VOCAB = 65
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
NAMES = {"lstm": "LSTM", "mingru": "minGRU", "minlstm": "minLSTM", "mingru_h": "minGRU h{}"}
DEFAULTS = {  # per device: what the tables of docs/parallel_cells.md ran
    "cpu": dict(lengths=[32, 128, 512, 2048], tokens=8192, hidden=256, dtype=["fp32"],
                steps=2, repeats=3, sections=["training", "generation"]),
    "cuda": dict(lengths=[128, 512, 2048, 8192], tokens=65536, hidden=512,
                 dtype=["fp32", "bf16"], steps=2, repeats=3, sections=["training"]),
}
MEMORY_LENGTH = 2048


def encoder_parameters(cell: str, input_size: int, hidden: int, layers: int) -> int:
    """As RNNEncoder(input_size, hidden, cell=cell, num_layers=layers) counts them."""
    total, inputs = 0, input_size
    for _ in range(layers):
        if cell in PARALLEL_CELLS:
            total += len(PARALLEL_CELLS[cell]) * hidden * (inputs + 1)
        else:
            total += 4 * hidden * (inputs + hidden + 2)
        inputs = hidden
    return total


def matching_hidden(cell: str, input_size: int, target: int, layers: int) -> int:
    """The hidden size whose encoder parameter count is closest to ``target``."""
    low, high = 1, 1 << 16
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
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


class Bench:
    """One model, its optimizer and how it steps on a device under a dtype."""

    def __init__(self, cell: str, hidden: int, args, device: torch.device):
        self.model = TinyLM(cell, args.embedding, hidden).to(device)
        if cell in PARALLEL_CELLS:
            self.model.encoder.rnn.scan_backend = args.scan
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.device = device

    def step(self, tokens: torch.Tensor, dtype) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            loss = self.model.loss(tokens)
        loss.backward()
        self.optimizer.step()

    def seconds(self, tokens: torch.Tensor, dtype, steps: int) -> float:
        """Seconds a step: the mean over ``steps`` on the CPU, on CUDA the fastest step."""
        times = []
        for _ in range(steps):
            _synchronize(self.device)
            start = time.perf_counter()
            self.step(tokens, dtype)
            _synchronize(self.device)
            times.append(time.perf_counter() - start)
        return min(times) if self.device.type == "cuda" else sum(times) / steps

    def peak_bytes(self, tokens: torch.Tensor, dtype) -> int:
        """CUDA memory one step needs beyond what is allocated before it."""
        _synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step(tokens, dtype)
        _synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - before


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_sizes(args) -> dict[str, int]:
    target = encoder_parameters("lstm", args.embedding, args.hidden, 1)
    sizes = {"lstm": args.hidden, "mingru": matching_hidden("mingru", args.embedding, target, 1),
             "minlstm": matching_hidden("minlstm", args.embedding, target, 1),
             "mingru_h": args.hidden}
    return sizes


def label(key: str, args) -> str:
    return NAMES[key].format(args.hidden)


def bench_training(args, device: torch.device) -> None:
    sizes = model_sizes(args)
    print(f"training: one layer, embedding {args.embedding}, {args.tokens} tokens a batch, "
          f"Adam, {args.repeats} repetitions of {args.steps} steps, scan {args.scan}")
    for key, hidden in sizes.items():
        cell = key.removesuffix("_h")
        print(f"  {label(key, args)}: hidden {hidden}, encoder parameters "
              f"{encoder_parameters(cell, args.embedding, hidden, 1):,}")
    speeds, memory = {}, {}
    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        print(f"\n{dtype_name}" + (" autocast" if dtype is not None else "") + "\n\n| T | B | "
              + " | ".join(f"{label(k, args)} tokens/s" for k in sizes) + " | "
              + " | ".join(f"{label(k, args)} / LSTM" for k in sizes if k != "lstm") + " |\n|"
              + "---:|" * (2 + 2 * len(sizes) - 1), flush=True)
        for length in args.lengths:
            batch = max(1, args.tokens // length)
            torch.manual_seed(0)
            tokens = torch.randint(0, VOCAB, (batch, length + 1), device=device)
            benches = {}
            for key, hidden in sizes.items():
                torch.manual_seed(0)
                benches[key] = Bench(key.removesuffix("_h"), hidden, args, device)
                warm_up(benches[key], tokens, dtype, args)
            if device.type == "cuda" and length == MEMORY_LENGTH:
                for key, bench in benches.items():
                    memory[key, dtype_name] = (bench.peak_bytes(tokens, dtype), batch * length)
            seconds = {key: [] for key in sizes}
            for _ in range(args.repeats):
                for key, bench in benches.items():
                    seconds[key].append(bench.seconds(tokens, dtype, args.steps))
            speed = {k: batch * length / statistics.median(s) for k, s in seconds.items()}
            ratio = {k: statistics.median(a / b for a, b in zip(seconds["lstm"], seconds[k]))
                     for k in sizes if k != "lstm"}
            speeds[length, dtype_name] = speed, ratio
            print(f"| {length} | {batch} | " + " | ".join(f"{speed[k]:,.0f}" for k in sizes)
                  + " | " + " | ".join(f"{ratio[k]:.2f}x" for k in ratio) + " |", flush=True)
            del benches
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary(args, speeds)
    if memory:
        print(f"\npeak memory of one training step at T = {MEMORY_LENGTH} (beyond weights, "
              "optimizer state and batch)\n\n| model | hidden | dtype | peak MiB | KiB / token |"
              "\n|---|---:|---|---:|---:|")
        for (key, dtype_name), (peak, count) in memory.items():
            print(f"| {label(key, args)} | {sizes[key]} | {dtype_name} | {peak / 2**20:,.0f} | "
                  f"{peak / count / 1024:.1f} |")


def warm_up(bench: Bench, tokens: torch.Tensor, dtype, args) -> None:
    """Two steps (kernels compiled, cuDNN's choice made); a Triton kernel that fails to build is
    reported once, and the PyTorch scan runs instead for the rest of the run."""
    try:
        for _ in range(2):
            bench.step(tokens, dtype)
    except Exception as error:  # noqa: BLE001 (any failure of a kernel build is reported)
        encoder = bench.model.encoder
        if encoder.cell not in PARALLEL_CELLS or args.scan == "torch":
            raise
        print(f"  ! the Triton scan failed ({type(error).__name__}: {str(error)[:300]}); "
              "the cells run the PyTorch scan from here on", flush=True)
        args.scan = "torch"
        encoder.rnn.scan_backend = "torch"
        for _ in range(2):
            bench.step(tokens, dtype)


def check_scan(args, device: torch.device) -> None:
    """Before timing the Triton scan: its outputs and gradients against the PyTorch scan on a
    small batch (lengths, initial state, several chunks); a mismatch or failure is reported and
    the PyTorch scan runs instead."""
    if args.scan == "torch" or device.type != "cuda":
        return
    try:
        errors = [scan_difference(cell, device) for cell in PARALLEL_CELLS]
    except Exception as error:  # noqa: BLE001 (any failure of a kernel build is reported)
        print(f"! the Triton scan failed ({type(error).__name__}: {str(error)[:300]}); "
              "the cells run the PyTorch scan", flush=True)
        args.scan = "torch"
        return
    worst = max(errors)
    print(f"Triton scan vs PyTorch scan (outputs and gradients): largest difference {worst:.1e}",
          flush=True)
    if worst > 1e-3:
        print("! the Triton scan disagrees: the cells run the PyTorch scan", flush=True)
        args.scan = "torch"


def scan_difference(cell: str, device: torch.device) -> float:
    torch.manual_seed(0)
    gates = torch.randn(3, 300, len(PARALLEL_CELLS[cell]) * 70, device=device) * 2
    h0, lengths = torch.randn(3, 70, device=device), torch.tensor([300, 171, 5], device=device)
    weights = torch.randn(3, 300, 70, device=device)
    results = []
    for backend in ("triton", "torch"):
        inputs = [gates.clone().requires_grad_(), h0.clone().requires_grad_()]
        if backend == "triton":
            out = scan_triton.fused_scan(cell, inputs[0], inputs[1], lengths)
        else:
            a, b = coefficients(cell, inputs[0])
            padding = (torch.arange(300, device=device) >= lengths.unsqueeze(1)).unsqueeze(2)
            out = linear_scan(a.masked_fill(padding, 1.0), b.masked_fill(padding, 0.0), inputs[1])
        results.append([out, *torch.autograd.grad((out * weights).sum(), inputs)])
    return max(((x - y).abs().max() / y.abs().max().clamp(min=1)).item()
               for x, y in zip(*results))


def summary(args, speeds) -> None:
    """The issue's layout: per T, the LSTM's tokens/s and each cell's ratio, dtype by dtype;
    then each cell's bf16 speed over its own fp32 speed."""
    keys = [k for k in model_sizes(args) if k != "lstm"]
    head = []
    for dtype_name in args.dtype:
        head += [f"LSTM tok/s {dtype_name}"] + [f"{label(k, args)} / LSTM {dtype_name}"
                                                for k in keys]
    print("\nsummary\n\n| T | " + " | ".join(head) + " |\n|" + "---:|" * (1 + len(head)))
    for length in args.lengths:
        cells = []
        for dtype_name in args.dtype:
            speed, ratio = speeds[length, dtype_name]
            cells += [_tokens(speed["lstm"])] + [f"{ratio[k]:.2f}" for k in keys]
        print(f"| {length} | " + " | ".join(cells) + " |")
    if "fp32" in args.dtype and "bf16" in args.dtype:
        print("\nbf16 / fp32, each model's own tokens/s\n\n| T | "
              + " | ".join(label(k, args) for k in ["lstm", *keys]) + " |\n|"
              + "---:|" * (2 + len(keys)))
        for length in args.lengths:
            low, high = speeds[length, "fp32"][0], speeds[length, "bf16"][0]
            print(f"| {length} | " + " | ".join(f"{high[k] / low[k]:.2f}"
                                                for k in ["lstm", *keys]) + " |")


def _tokens(per_second: float) -> str:
    return f"{per_second / 1e6:.2f}M" if per_second >= 1e5 else f"{per_second:,.0f}"


def bench_generation(args) -> None:
    # here, not at the top: the training section needs only torch (the char LM needs Lightning)
    from seqmodels.data.vocab import Vocab
    from seqmodels.models.charlm import CharLanguageModel

    target = encoder_parameters("lstm", 64, 512, 2)
    sizes = {"lstm": 512, **{c: matching_hidden(c, 64, target, 2) for c in ("mingru", "minlstm")}}
    vocab = Vocab(["<pad>", "<unk>", *(chr(33 + i) for i in range(VOCAB - 2))])
    print(f"\ngeneration (CPU): 2 layers, embedding 64, {args.chars} chars after a 1-char "
          f"prompt, median of {args.repeats}\n\n| cell | hidden | encoder parameters | chars/s |"
          "\n|---|---:|---:|---:|")
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=list(DEFAULTS), default="cpu")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES),
                        help="fp32 and/or bf16 (autocast); default: fp32 on the CPU, both on CUDA")
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--tokens", type=int, help="tokens a training batch")
    parser.add_argument("--embedding", type=int, default=128)
    parser.add_argument("--hidden", type=int, help="the LSTM's hidden size")
    parser.add_argument("--steps", type=int, help="training steps a repetition")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--scan", choices=SCAN_BACKENDS, default="auto",
                        help="the cells' scan: auto (Triton on CUDA), triton or torch")
    parser.add_argument("--chars", type=int, default=2000, help="generated chars a repetition")
    parser.add_argument("--sections", nargs="+", choices=["training", "generation"])
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch")
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} thread(s)")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"torch {torch.__version__}, {where}, {stamp}")
    if "training" in args.sections:
        check_scan(args, device)
        bench_training(args, device)
    if "generation" in args.sections:
        bench_generation(args)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
