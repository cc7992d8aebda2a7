"""Character features: the batch carries each distinct spelling once, sorted and grouped on the
CPU, so the model's step reads nothing back from a device; the results are those of the
earlier algorithm (unique, sort and boolean indexing inside the model), kept here as the
reference."""

import random

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from seqmodels.data.batching import collate_classification
from seqmodels.data.chars import GROUP_CUTS, SpelledWords, spell_batch
from seqmodels.data.tagging import collate_tagging
from seqmodels.data.vocab import PAD_ID
from seqmodels.models import char_features
from seqmodels.models.char_features import CharWordEncoder
from seqmodels.models.encoder import RNNEncoder
from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.models.tagger import SequenceTagger

NUM_CHARS = 14
CHARS = {"embedding_dim": 4, "hidden_size": 5}


def reference_forward(encoder: CharWordEncoder, chars: torch.Tensor, mask: torch.Tensor):
    """The model-side algorithm the batch layout replaced, step for step: (B, T, W) ids and the
    (B, T) mask -> (B, T, D)."""
    words = chars[mask]
    spellings, which = torch.unique(words, dim=0, return_inverse=True)
    lengths = (spellings != PAD_ID).sum(dim=1).clamp(min=1)
    lengths, order = lengths.sort()
    spellings = spellings[order]
    count = len(order)
    bounds = [0, *(int(count * cut) for cut in GROUP_CUTS), count]
    parts = []
    for start, end in zip(bounds, bounds[1:]):
        if end > start:
            group = spellings[start:end, : int(lengths[end - 1])]
            parts.append(encoder.encoder(encoder.embedding(group),
                                         lengths[start:end].cpu()).final)
    sorted_vectors = torch.cat(parts)
    vectors = torch.empty_like(sorted_vectors)
    vectors[order] = sorted_vectors
    out = vectors.new_zeros(*mask.shape, vectors.size(1))
    out[mask] = vectors[which]
    return out


def random_sentences(seed: int, batch: int = 6) -> list[list[list[int]]]:
    """Spelled sentences with many repeated words, an empty FORM and words of 30 characters."""
    rng = random.Random(seed)
    pool = [[rng.randrange(2, NUM_CHARS) for _ in range(rng.randint(1, 6))] for _ in range(8)]
    pool += [[], [rng.randrange(1, NUM_CHARS) for _ in range(30)], [3] * 30]
    return [[rng.choice(pool) if rng.random() < 0.7 else
             [rng.randrange(1, NUM_CHARS) for _ in range(rng.randint(1, 12))]
             for _ in range(rng.randint(1, 9))] for _ in range(batch)]


def padded_by_hand(sentences, steps: int) -> torch.Tensor:
    width = max(max((len(w) for s in sentences for w in s), default=1), 1)
    rows = [[w + [PAD_ID] * (width - len(w)) for w in s] + [[PAD_ID] * width] * (steps - len(s))
            for s in sentences]
    return torch.tensor(rows, dtype=torch.long)


def prefix_mask(sentences, steps: int) -> torch.Tensor:
    return torch.arange(steps) < torch.tensor([len(s) for s in sentences]).unsqueeze(1)


def test_the_batch_holds_each_spelling_once_sorted_and_grouped():
    sentences = [[[5, 6], [3], [5, 6], []], [[3], [7, 8, 9]]]
    words = spell_batch(sentences, steps=5)
    assert words.spellings.tolist() == [[0, 0, 0], [3, 0, 0], [5, 6, 0], [7, 8, 9]]
    assert words.lengths.tolist() == [1, 1, 2, 3] and words.lengths.device.type == "cpu"
    assert words.index.tolist() == [[2, 1, 2, 0, 4], [1, 3, 4, 4, 4]]  # 4: padding
    assert words.groups == ((0, 2, 1), (2, 3, 2), (3, 4, 3))
    assert all(isinstance(n, int) for group in words.groups for n in group)
    torch.testing.assert_close(words.padded(), padded_by_hand(sentences, 5))


@pytest.mark.parametrize("seed", range(4))
def test_from_padded_ids_gives_the_collates_layout(seed):
    sentences = random_sentences(seed)
    steps = max(map(len, sentences)) + 1
    built = spell_batch(sentences, steps)
    read = SpelledWords.from_padded(padded_by_hand(sentences, steps),
                                    prefix_mask(sentences, steps))
    for name in ("spellings", "lengths", "index"):
        torch.testing.assert_close(getattr(read, name), getattr(built, name))
    assert read.groups == built.groups


@pytest.mark.parametrize("calls", ["cpu", "cuda"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("seed", range(5))
def test_outputs_and_gradients_equal_the_reference(seed, cell, calls, monkeypatch):
    """Per length group (the CPU's calls) or in one call (CUDA's), the same numbers."""
    grouping = char_features.call_groups
    monkeypatch.setattr(char_features, "call_groups", lambda words, _: grouping(words, calls))
    if calls == "cuda":
        assert len(grouping(spell_batch(random_sentences(seed), 9), "cuda")) == 1
    torch.manual_seed(seed)
    encoder = CharWordEncoder(NUM_CHARS, 4, 5, cell=cell)
    sentences = random_sentences(seed)
    steps = max(map(len, sentences))
    words, mask = spell_batch(sentences, steps), prefix_mask(sentences, steps)
    upstream = torch.randn(len(sentences), steps, encoder.get_output_dim())

    def run(forward):
        encoder.zero_grad()
        out = forward()
        (out * upstream).sum().backward()
        return out.detach(), [p.grad.clone() for p in encoder.parameters()]

    out, grads = run(lambda: encoder(words, mask))
    expected, expected_grads = run(lambda: reference_forward(encoder, words.padded(), mask))
    torch.testing.assert_close(out, expected)
    assert out[~mask].abs().sum() == 0
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
    # (B, T, W) ids made by hand take the same path.
    torch.testing.assert_close(encoder(padded_by_hand(sentences, steps), mask), expected)


def with_reference_char_encoder(model):
    """``model`` whose character encoder runs the reference algorithm on padded ids."""
    char_encoder = model.embeddings.chars

    def forward(words, mask):
        chars = words.padded() if isinstance(words, SpelledWords) else words
        return reference_forward(char_encoder, chars, mask)

    char_encoder.forward = forward
    return model


def outputs_and_grads(model, batch):
    model.zero_grad()
    out = model(batch.tokens, batch.lengths, batch.chars)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def assert_same_as_reference(make_model, batch):
    new, new_grads = outputs_and_grads(make_model(), batch)
    old, old_grads = outputs_and_grads(with_reference_char_encoder(make_model()), batch)
    torch.testing.assert_close(new, old)
    assert new_grads.keys() == old_grads.keys() and any("embeddings.chars" in n for n in new_grads)
    for name in new_grads:
        torch.testing.assert_close(new_grads[name], old_grads[name], msg=name)


@pytest.mark.parametrize("seed", range(3))
def test_tagger_outputs_and_gradients_equal_the_reference(seed):
    rng = random.Random(seed)
    examples = [([rng.randrange(1, 20) for _ in s], [rng.randrange(3) for _ in s], s)
                for s in random_sentences(seed)]

    def make_model():
        torch.manual_seed(seed)
        return SequenceTagger(20, NUM_CHARS, ["A", "B", "C"], {"hidden_size": 6},
                              embedding_dim=5, chars=CHARS, dropout=0.0,
                              embedding_dropout=0.0, word_dropout=0.0)

    assert_same_as_reference(make_model, collate_tagging(examples))


@pytest.mark.parametrize("seed", range(3))
def test_sentiment_outputs_and_gradients_equal_the_reference(seed):
    rng = random.Random(seed)
    # data.char_features=true: examples are (ids, label, spelled words).
    examples = [([rng.randrange(1, 20) for _ in s], rng.randrange(2), s)
                for s in random_sentences(seed)]

    def make_model():
        torch.manual_seed(seed)
        return SentimentClassifier(20, 2, {"hidden_size": 6, "bidirectional": True},
                                   embedding_dim=5, pooling="max", chars=CHARS,
                                   num_chars=NUM_CHARS, dropout=0.0, embedding_dropout=0.0)

    assert_same_as_reference(make_model, collate_classification(examples))


def test_the_batch_moves_its_spellings_and_keeps_lengths_on_the_cpu():
    batch = collate_tagging([([5, 6], [0, 1], [[3, 4, 5], [6]]), ([7], [2], [[8, 9]])])
    moved = batch.to("meta")
    assert moved.chars.spellings.is_meta and moved.chars.index.is_meta
    assert moved.chars.lengths.device.type == "cpu" and moved.chars.groups == batch.chars.groups
    assert batch.chars.padded().tolist() == [[[3, 4, 5], [6, 0, 0]], [[8, 9, 0], [0, 0, 0]]]


# -- no waiting on the host ------------------------------------------------------------------------
class HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for a device: reading a value back
    (``.item()``, ``int()``, ``bool()``; ``.cpu()`` and ``.tolist()`` of a device tensor), and
    ops whose output size depends on the data (boolean indexing among them)."""

    SYNCING = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select",
               "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive",
               "aten.repeat_interleave"}
    INDEXING = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}

    def __init__(self, skip: tuple[nn.Module, ...] = ()):
        """:param skip: modules whose forward is not counted (the RNN encoders, whose own
            reads are tests/test_encoder.py's business)."""
        super().__init__()
        self.reads: list[str] = []
        self.skipping = 0
        self.hooks = []
        for module in skip:
            self.hooks.append(module.register_forward_pre_hook(lambda *_: self._skip(1)))
            self.hooks.append(module.register_forward_hook(lambda *_: self._skip(-1)))

    def _skip(self, step: int) -> None:
        self.skipping += step

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if self.skipping:
            pass
        elif name in self.SYNCING:
            self.reads.append(name)
        elif name in self.INDEXING and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()):
            self.reads.append(name + " (boolean)")
        elif name == "aten._to_copy" and args[0].device.type != "cpu" and \
                torch.device((kwargs or {}).get("device") or args[0].device).type == "cpu":
            self.reads.append(name + " (to the host)")
        elif name == "aten.copy_" and args[0].device.type == "cpu" != args[1].device.type:
            self.reads.append(name + " (to the host)")
        return func(*args, **(kwargs or {}))


def test_host_reads_counter_sees_the_reference_algorithm():
    encoder = CharWordEncoder(NUM_CHARS, 4, 5)
    sentences = random_sentences(0)
    steps = max(map(len, sentences))
    with HostReads() as counter:
        reference_forward(encoder, padded_by_hand(sentences, steps),
                          prefix_mask(sentences, steps)).sum().backward()
    assert {"aten._unique2", "aten.unique_dim", "aten._local_scalar_dense",
            "aten.index (boolean)", "aten.index_put_ (boolean)"} & set(counter.reads)


def tagger_and_batch():
    sentences = random_sentences(1, batch=8)
    examples = [([2 + i % 17 for i in range(len(s))], [0] * len(s), s) for s in sentences]
    torch.manual_seed(0)
    model = SequenceTagger(20, NUM_CHARS, ["A", "B", "C"], {"hidden_size": 6},
                           embedding_dim=5, chars=CHARS).train()
    return model, collate_tagging(examples)  # the real collate, as loader workers run it


def test_character_features_read_nothing_back_in_a_training_step():
    model, batch = tagger_and_batch()
    encoders = tuple(m for m in model.modules() if isinstance(m, RNNEncoder))
    mask = torch.arange(batch.tokens.size(1)) < batch.lengths.unsqueeze(1)
    with HostReads(skip=encoders) as counter:
        model.embeddings.chars(batch.chars, mask).sum().backward()
    assert counter.reads == []
    with HostReads(skip=encoders) as counter:
        model(batch.tokens, batch.lengths, batch.chars).sum().backward()
    assert counter.reads == []


def test_a_tagger_training_step_with_character_features_reads_nothing_back():
    model, batch = tagger_and_batch()
    with HostReads() as counter:
        encoder = RNNEncoder(4, 3, bidirectional=True)
        encoder(torch.randn(2, 3, 4), torch.tensor([3, 1])).outputs.sum().backward()
    if counter.reads:
        pytest.skip(f"the RNN encoder's padded path still reads back: {counter.reads}")
    with HostReads() as counter:
        model(batch.tokens, batch.lengths, batch.chars).sum().backward()
    assert counter.reads == []
