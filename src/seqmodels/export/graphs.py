"""Each task's network (``module.net``) as a graph that ONNX can hold with dynamic batch and
sequence-length axes, computing what the network computes.

Recurrent models are where exports go wrong: ``pack_padded_sequence`` does not export (or
exports for the traced lengths only), and a Python loop over the steps is unrolled for the
traced length. So the exported copy

- runs every encoder with the ``padded`` strategy (``models/encoder.py``): exact with lengths,
  no packing; the backward direction is a gather that reverses each row within its length;
- runs each layer-direction of a torch cell as its own one-layer ``nn.RNN``/``GRU``/``LSTM``
  holding that layer-direction's weights (the encoder's ``functional_call`` on a meta template
  cannot be traced), which ONNX holds as its own RNN/GRU/LSTM operator over any length;
- runs minGRU/minLSTM's linear recurrence as a scripted loop, which becomes an ONNX ``Loop``
  over the steps (the training scan's chunking depends on the traced length);
- reads character features from the batch's distinct spellings, laid out as training's
  ``SpelledWords`` (the runner finds them with numpy), all through the character encoder in
  one call, each with its own length, instead of training's few calls by length group.

Nothing here changes the trained network: the graphs wrap a deep copy.
"""

import copy
import functools
import warnings

import torch
from torch import Tensor, nn

from seqmodels.data.vocab import PAD_ID
from seqmodels.models.char_features import CharWordEncoder
from seqmodels.models.encoder import CELLS, RNNEncoder, State
from seqmodels.models.parallel_cells import PARALLEL_CELLS, coefficients

# The graph's input and output names, by task: what the exported README lists and the
# onnxruntime runner feeds.
CLASSIFIER_INPUTS = ("tokens", "lengths")
TAGGER_INPUTS = ("tokens", "lengths")
CHARS_INPUTS = ("spellings", "spelling_index")


def _linear_recurrence(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h_t = a_t h_(t-1) + b_t over (B, T, H), step by step from the (B, H) ``h0``."""
    h = h0
    steps: list[Tensor] = []
    for t in range(a.size(1)):
        h = a[:, t] * h + b[:, t]
        steps.append(h)
    return torch.stack(steps, dim=1)


@functools.cache
def linear_recurrence():
    """``_linear_recurrence`` scripted, so that the loop runs over the input's own length
    after export (traced, it would be unrolled for the traced length). Scripting is
    deprecated in favour of torch.export, whose ONNX exporter fixes the length elsewhere
    (``writer._onnx_export``); its warning is not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_linear_recurrence)


class ExportEncoder(RNNEncoder):
    """An ``RNNEncoder`` whose layer-directions run as traceable modules (see the module
    docstring). Built by ``from_encoder`` only; the forward is ``RNNEncoder``'s padded path."""

    @classmethod
    def from_encoder(cls, encoder: RNNEncoder) -> "ExportEncoder":
        copied = copy.deepcopy(encoder)
        copied.__class__ = cls
        copied.variable_length = "padded"
        if encoder.cell not in PARALLEL_CELLS:
            extra = {"nonlinearity": encoder.rnn.nonlinearity} if encoder.cell == "rnn" else {}
            layers = []
            for layer in range(encoder.num_layers):
                for direction in range(encoder.num_directions):
                    weights = encoder.layer_weights(layer, direction)
                    rnn = CELLS[encoder.cell](weights["weight_ih_l0"].size(1),
                                              encoder.hidden_size, batch_first=True, **extra)
                    rnn.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
                    layers.append(rnn)
            copied.layers = nn.ModuleList(layers)
        return copied

    def strategy(self, x: Tensor, lengths: Tensor | None = None) -> str:
        return "padded"

    def run_layer(self, layer: int, direction: int, seq: Tensor, initial: State | None = None,
                  lengths: Tensor | None = None) -> tuple[Tensor, State]:
        if self.cell not in PARALLEL_CELLS:
            return self.layers[layer * self.num_directions + direction](seq, initial)
        gates = self.rnn.project(layer, direction, seq)
        a, b = coefficients(self.cell, gates)
        if lengths is not None:  # past a row's end the state passes through, as in training
            padding = (torch.arange(seq.size(1), device=seq.device)
                       >= lengths.unsqueeze(1)).unsqueeze(2)
            a, b = a.masked_fill(padding, 1.0), b.masked_fill(padding, 0.0)
        h0 = torch.zeros_like(b[:, 0]) if initial is None else initial[0].float()
        out = linear_recurrence()(a, b, h0).to(gates.dtype)
        return out, out[:, -1].unsqueeze(0)


class SpellingsCharEncoder(nn.Module):
    """``CharWordEncoder`` over a batch's distinct spellings, laid out as ``SpelledWords``
    lays them out (the runner builds the same on the host, with numpy): (U, W) character ids,
    ``PAD_ID`` after each spelling's end, and the (B, T) row of each position's spelling,
    U at padding. All U spellings go through the encoder in one call, each with its own
    length (training reads them in a few groups of similar length: the padded strategy makes
    both exact)."""

    def __init__(self, chars: CharWordEncoder):
        super().__init__()
        self.embedding = chars.embedding
        self.encoder = ExportEncoder.from_encoder(chars.encoder)

    def get_output_dim(self) -> int:
        return self.encoder.get_output_dim()

    def forward(self, words: tuple[Tensor, Tensor], mask: Tensor) -> Tensor:
        spellings, index = words
        lengths = (spellings != PAD_ID).sum(dim=1).clamp(min=1)  # an empty word: one PAD_ID
        final = self.encoder(self.embedding(spellings), lengths).final  # (U, D)
        table = torch.cat([final, final.new_zeros(1, final.size(1))])  # padding's row: U
        vectors = table[index]  # (B, T, D)
        return vectors * mask.unsqueeze(2).to(vectors.dtype)


def exportable_copy(net: nn.Module) -> nn.Module:
    """A deep copy of a task's network in eval mode, with every encoder an ``ExportEncoder``
    and character features read from a batch's distinct spellings."""
    net = copy.deepcopy(net).eval()
    for owner in [net, *net.modules()]:
        for name, child in list(owner.named_children()):
            if isinstance(child, CharWordEncoder):
                setattr(owner, name, SpellingsCharEncoder(child))
            elif isinstance(child, RNNEncoder) and not isinstance(child, ExportEncoder):
                setattr(owner, name, ExportEncoder.from_encoder(child))
    return net


class ClassifierGraph(nn.Module):
    """tokens (B, T), lengths (B,) [, spellings (U, W), spelling_index (B, T)] -> probs
    (B, num_classes)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = exportable_copy(net)
        self.eval()

    def forward(self, tokens: Tensor, lengths: Tensor, spellings: Tensor | None = None,
                spelling_index: Tensor | None = None) -> Tensor:
        chars = None if spellings is None else (spellings, spelling_index)
        return self.net(tokens, lengths, chars).softmax(dim=-1)


class TaggerGraph(nn.Module):
    """tokens (B, T), lengths (B,) [, spellings (U, W), spelling_index (B, T)] -> scores
    (B, T, num_tags): the logits per token (their argmax is the tag)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = exportable_copy(net)
        self.eval()

    def forward(self, tokens: Tensor, lengths: Tensor, spellings: Tensor | None = None,
                spelling_index: Tensor | None = None) -> Tensor:
        chars = None if spellings is None else (spellings, spelling_index)
        return self.net(tokens, lengths, chars)


class CharLMStepGraph(nn.Module):
    """tokens (B, T) and the state (h [, c]: (layers, B, H) each) -> logits (B, T, V) and the
    state after the last step. T = 1 is one generation step; the prompt goes in at once."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = exportable_copy(net)
        self.lstm = self.net.encoder.cell == "lstm"
        self.eval()

    def forward(self, tokens: Tensor, h: Tensor, c: Tensor | None = None):
        logits, state = self.net(tokens, (h, c) if self.lstm else h)
        if self.lstm:
            return logits, state[0], state[1]
        return logits, state
