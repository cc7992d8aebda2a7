"""Is a whole training step captured in one CUDA graph worth offering? (issue 22, item 4)

The default SST-2 network (``models/networks.py``'s ``SentenceClassifierNet``: embedding
16,000 x 300, BiLSTM 150, max pooling, word dropout, the adversarial pass), batches of a fixed
shape (32 sentences padded to 64 steps, lengths 3-49 as in SST-2), fused Adam, gradient
clipping; the same step run eagerly and replayed from one captured graph
(``torch.cuda.graph``, public API). Prints steps/s of both and their ratio, and the largest
weight difference between the two after the same steps from the same start (dropout off, mean
pooling, SGD: ``max_weight_difference``), beside the same difference between two eager runs.

    python scripts/bench_cuda_graphs.py                 # on a CUDA GPU, about 30 s
    python scripts/bench_cuda_graphs.py --device cpu --steps 3 --vocab 50   # eager only

No Hydra (the GPU machines of this project lack it); results as one JSON line with --json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from seqmodels.data.batching import Batch  # noqa: E402
from seqmodels.data.vocab import PAD_ID  # noqa: E402
from seqmodels.models.embeddings import WordEmbeddings  # noqa: E402
from seqmodels.models.networks import SentenceClassifierNet  # noqa: E402


def make_net(vocab: int, dropout: bool, pooling: str = "max") -> SentenceClassifierNet:
    torch.manual_seed(0)
    return SentenceClassifierNet(
        WordEmbeddings(vocab, 300), {"cell": "lstm", "hidden_size": 150, "bidirectional": True},
        num_classes=2, pooling=pooling, word_dropout=0.25 if dropout else 0.0,
        adversarial_epsilon=5.0)


def make_batches(count: int, vocab: int, device: torch.device, steps: int = 64,
                 size: int = 32) -> list[Batch]:
    """Fixed-shape batches on the device, lengths there too (a captured graph reads only
    device memory)."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        lengths = torch.randint(3, 50, (size,), generator=generator)
        tokens = torch.randint(2, vocab, (size, steps), generator=generator)
        tokens[torch.arange(steps) >= lengths.unsqueeze(1)] = PAD_ID
        targets = torch.randint(0, 2, (size,), generator=generator)
        batches.append(Batch(tokens.to(device), lengths.to(device), targets.to(device)))
    return batches


class Step:
    """One training step of ``net``: loss (with the adversarial pass), backward, clipping,
    fused Adam; eager, or replayed from a graph captured once."""

    def __init__(self, net: SentenceClassifierNet, captured: bool, optimizer: str = "adam"):
        self.net, self.captured = net, captured
        self.params = [p for p in net.parameters() if p.requires_grad]
        device = self.params[0].device
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.params, lr=1e-3, fused=device.type == "cuda",
                                              capturable=captured)
        else:  # plain SGD: what the comparison below steps with
            self.optimizer = torch.optim.SGD(self.params, lr=0.1)
        self.graph = self.static = None

    def _eager(self, batch: Batch) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.net.training_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 5.0, foreach=True)
        self.optimizer.step()
        return loss.detach()

    def __call__(self, batch: Batch) -> torch.Tensor:
        if not self.captured:
            return self._eager(batch)
        if self.graph is None:
            self._capture(batch)
        for name in ("tokens", "lengths", "targets"):
            getattr(self.static, name).copy_(getattr(batch, name))
        self.graph.replay()
        return self.static_loss

    def _capture(self, batch: Batch) -> None:
        """Warm up on a side stream (cuDNN and the optimizer allocate their state), then
        capture one step; its first replay is the first counted step."""
        self.static = Batch(batch.tokens.clone(), batch.lengths.clone(), batch.targets.clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._eager(self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # gradients then live in the graph's pool
        with torch.cuda.graph(self.graph):
            self.static_loss = self._eager(self.static)


def steps_per_second(step: Step, batches: list[Batch], count: int, device) -> float:
    for batch in batches[:5]:  # warm-up (and capture)
        step(batch)
    synchronize(device)
    start = time.perf_counter()
    for i in range(count):
        step(batches[i % len(batches)])
    synchronize(device)
    return count / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def max_weight_difference(vocab: int, batches: list[Batch], device, count: int,
                          captured: bool = True) -> float:
    """The largest weight difference between an eager run and a captured one (or a second
    eager one, ``captured=False``: the noise floor) from the same start over the same batches.

    Dropout off, mean pooling and plain SGD, so that rounding differences stay rounding-sized:
    max pooling picks one step per feature and a near-tie can pick another, and Adam divides
    each gradient by its own running scale, so that a nearly-zero gradient that differs only
    in its rounding still moves its weight by a whole step. (With max pooling and Adam the
    runs drift apart by about the learning rate per step; docs/benchmarks_gpu.md.) The
    captured run's first three steps are its warm-up on the first batch, so the eager run
    takes them too."""
    nets = [make_net(vocab, dropout=False, pooling="mean").to(device) for _ in range(2)]
    first = Step(nets[0], captured=False, optimizer="sgd")
    second = Step(nets[1], captured=captured, optimizer="sgd")
    for _ in range(3):
        first(batches[0])
        if not captured:
            second(batches[0])
    for i in range(count):
        first(batches[i % len(batches)])
        second(batches[i % len(batches)])
    synchronize(device)
    return max((a - b).abs().max().item() for a, b in
               zip(nets[0].parameters(), nets[1].parameters(), strict=True))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batches = make_batches(20, args.vocab, device)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "steps": args.steps}
    result["eager_steps_per_s"] = steps_per_second(
        Step(make_net(args.vocab, True).to(device), captured=False), batches, args.steps, device)
    if device.type == "cuda":
        result["captured_steps_per_s"] = steps_per_second(
            Step(make_net(args.vocab, True).to(device), captured=True), batches, args.steps,
            device)
        result["captured_over_eager"] = (result["captured_steps_per_s"]
                                         / result["eager_steps_per_s"])
        result["max_weight_difference_after_20_steps"] = max_weight_difference(
            args.vocab, batches, device, 20)
        result["eager_noise_floor_after_20_steps"] = max_weight_difference(
            args.vocab, batches, device, 20, captured=False)
    else:
        result["captured_steps_per_s"] = None  # CUDA graphs need a CUDA device
    print(json.dumps(result) if args.json else
          "\n".join(f"{key}: {value}" for key, value in result.items()), flush=True)
    return result


if __name__ == "__main__":
    main()
