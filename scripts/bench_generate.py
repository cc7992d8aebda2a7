"""Characters per second of text generation: carrying the hidden state versus re-running the
prefix, and which per-step loop is fastest on this CPU.

    python scripts/bench_generate.py                      # a 2-layer 256-unit LSTM, random weights
    python scripts/bench_generate.py --ckpt path/to/last.ckpt   # a trained model

Every loop samples with the same seed from the same distributions, so all of them must write
the same text; the script checks that, and the largest logit difference to a full re-run.
"""

import argparse
import time

import torch

from seqmodels.cli.eval import load_model
from seqmodels.data.vocab import Vocab
from seqmodels.models.charlm import CharLanguageModel
from seqmodels.models.sampling import FusedLSTMStepper, RecurrentStepper, pick


class Rerun:
    """The slow reference: every new character re-reads the whole text so far."""

    def __init__(self, model):
        self.model, self.ids = model, []

    def prime(self, ids):
        self.ids = list(ids)
        return self._last()

    def step(self, char_id):
        self.ids.append(char_id)
        return self._last()

    def _last(self):
        tokens = torch.tensor([self.ids], device=self.model.device)  # (1, T)
        return self.model(tokens)[0][0, -1]


class EncoderStep:
    """The model's own forward on one character at a time, carrying the encoder's state."""

    def __init__(self, model):
        self.model, self.state = model, None

    def prime(self, ids):
        logits, self.state = self.model(torch.tensor([ids], device=self.model.device))
        return logits[0, -1]

    def step(self, char_id):
        tokens = torch.tensor([[char_id]], device=self.model.device)  # (1, 1)
        logits, self.state = self.model(tokens, self.state)
        return logits[0, -1]


class TorchRNNStep(EncoderStep):
    """Each layer's torch RNN module called directly on a (1, 1, E) input."""

    def step(self, char_id):
        x = self.model.embedding.weight[char_id].view(1, 1, -1)  # (1, 1, E)
        lstm = isinstance(self.state, tuple)
        new_h, new_c = [], []
        encoder = self.model.encoder
        for index in range(encoder.num_layers):
            initial = ((self.state[0][index : index + 1], self.state[1][index : index + 1])
                       if lstm else self.state[index : index + 1])
            x, final = encoder.run_layer(index, 0, x, initial)
            new_h.append(final[0] if lstm else final)
            if lstm:
                new_c.append(final[1])
        self.state = (torch.cat(new_h), torch.cat(new_c)) if lstm else torch.cat(new_h)
        return self.model.head(x)[0, -1]


LOOPS = {"rerun_prefix": Rerun, "encoder_forward_step": EncoderStep,
         "torch_rnn_module_step": TorchRNNStep, "cell_step": RecurrentStepper,
         "fused_lstm_step": FusedLSTMStepper}


@torch.no_grad()
def sample(model, loop, prompt_ids, num_chars, temperature, seed):
    generator = torch.Generator().manual_seed(seed)
    never = torch.zeros(model.head.out_features)
    never[:2] = float("-inf")  # <pad>, <unk>, as generate() does
    start = time.perf_counter()
    logits, out, all_logits = loop.prime(prompt_ids), [], []
    for _ in range(num_chars):
        all_logits.append(logits)
        out.append(pick(logits + never, temperature, None, generator))
        logits = loop.step(out[-1])
    return out, torch.stack(all_logits), time.perf_counter() - start


def random_model(vocab_size: int = 67) -> CharLanguageModel:
    torch.manual_seed(0)
    model = CharLanguageModel(vocab_size, {"cell": "lstm", "hidden_size": 256, "num_layers": 2},
                              embedding_dim=64)
    model.vocabs = {"chars": Vocab.build([["\n"] + [chr(32 + i) for i in range(vocab_size - 3)]])}
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="a char-LM checkpoint; default: random 2x256 LSTM")
    parser.add_argument("--num-chars", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", default="1,2", help="torch threads, one run per value")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = (load_model(args.ckpt, expected_task="language_model") if args.ckpt
             else random_model()).eval()
    prompt_ids = model.encode_prompt("\n", unknown_chars="skip")
    encoder = model.encoder
    loops = {name: loop for name, loop in LOOPS.items()
             if encoder.cell == "lstm" or loop is not FusedLSTMStepper}
    print(f"model: {encoder.num_layers}x{encoder.hidden_size} {encoder.cell}, "
          f"{model.head.out_features} characters; {args.num_chars} characters per sample")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        results = {name: sample(model, loop(model), prompt_ids, args.num_chars,
                                args.temperature, args.seed) for name, loop in loops.items()}
        ref_ids, ref_logits, ref_seconds = results["rerun_prefix"]
        print(f"\n{threads} thread(s)")
        print(f"{'loop':22} {'chars/s':>9} {'vs rerun':>9} {'same text':>9} {'max |dlogit|':>12}")
        for name, (ids, logits, seconds) in results.items():
            print(f"{name:22} {args.num_chars / seconds:9,.0f} {ref_seconds / seconds:8.1f}x "
                  f"{str(ids == ref_ids):>9} {float((logits - ref_logits).abs().max()):12.2e}")
        # The production path end to end (prompt check, stepper choice, sampling, decoding).
        start = time.perf_counter()
        text = model.generate("\n", args.num_chars, args.temperature, seed=args.seed,
                              unknown_chars="skip")
        seconds = time.perf_counter() - start
        print(f"{'model.generate':22} {args.num_chars / seconds:9,.0f} "
              f"{ref_seconds / seconds:8.1f}x")
    if args.ckpt:
        print("\nsample:\n" + text[:600])


if __name__ == "__main__":
    main()
