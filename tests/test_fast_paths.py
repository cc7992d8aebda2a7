"""Fast paths give the same results as their reference paths; how fast they are is the
benchmark's job (scripts/benchmark.py, docs/benchmarks.md), never a test's.

Covered here: Adam's three CPU implementations, sparse embedding gradients (their clipping and
SparseAdam's first step), padded vs packed on whole models (every encoder inside switched),
and the benchmark's plain loop against Lightning's own training step, so that its overhead
figure compares identical work.
"""

import copy
import random
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from seqmodels.cli.train import train
from seqmodels.data.batching import Batch, collate_classification
from seqmodels.data.tagging import collate_tagging
from seqmodels.models.encoder import RNNEncoder
from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.models.tagger import SequenceTagger
from tests.conftest import compose_config, write_lines

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import benchmark  # noqa: E402
import plain_loops as pl  # noqa: E402

VOCAB = 40


def sentiment_model(**kwargs) -> SentimentClassifier:
    torch.manual_seed(0)
    encoder = {"cell": "lstm", "hidden_size": 8, "bidirectional": True, "num_layers": 2}
    return SentimentClassifier(VOCAB, 2, encoder, embedding_dim=6, pooling="max", **kwargs)


def sentiment_batch(seed: int, words: list[int] | None = None, size: int = 5) -> Batch:
    """Sentences of lengths 1..9 (so padding and packing matter), drawn from ``words``."""
    rng = random.Random(seed)
    words = words or list(range(2, VOCAB))
    return collate_classification([([rng.choice(words) for _ in range(rng.randint(1, 9))],
                                     rng.randint(0, 1)) for _ in range(size)])


def train_steps(model, optimizers, batches, clip=5.0) -> None:
    for batch in batches:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss, _ = pl.task_loss(model, batch)
        loss.backward()
        pl.clip_grad_norm(model.parameters(), clip)
        for optimizer in optimizers:
            optimizer.step()


def assert_same_parameters(a, b, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=name)


# -- optimizers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["foreach", "fused"])
def test_adam_implementations_update_identically(kind):
    reference, fast = sentiment_model(), sentiment_model()
    batches = [sentiment_batch(seed) for seed in range(4)]
    train_steps(reference, pl.make_optimizers(reference, "adam", lr=0.01), batches)
    train_steps(fast, pl.make_optimizers(fast, kind, lr=0.01), batches)
    assert not torch.equal(reference.classifier.weight, sentiment_model().classifier.weight)
    assert_same_parameters(reference, fast)


def test_sparse_gradients_and_their_clipping_equal_the_dense_ones():
    dense = sentiment_model()
    sparse = copy.deepcopy(dense)
    sparse.embeddings.trained.sparse = True
    batch = sentiment_batch(0, words=[2, 3, 3, 4])  # repeated rows: an uncoalesced gradient
    for model in (dense, sparse):
        pl.task_loss(model, batch)[0].backward()
    assert sparse.embeddings.trained.weight.grad.is_sparse
    torch.testing.assert_close(sparse.embeddings.trained.weight.grad.to_dense(),
                               dense.embeddings.trained.weight.grad)

    dense_norm = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.01)
    sparse_norm = pl.clip_grad_norm(sparse.parameters(), 0.01)
    assert dense_norm > 0.01  # so clipping did scale the gradients
    torch.testing.assert_close(sparse_norm, dense_norm)
    torch.testing.assert_close(sparse.embeddings.trained.weight.grad.to_dense(),
                               dense.embeddings.trained.weight.grad)
    torch.testing.assert_close(sparse.classifier.weight.grad, dense.classifier.weight.grad)


def test_sparse_adam_is_adam_on_the_rows_a_batch_uses_and_leaves_the_others():
    dense = sentiment_model()
    sparse = copy.deepcopy(dense)
    sparse.embeddings.trained.sparse = True
    # A tiny eps: SparseAdam adds it before the bias correction, Adam after (see make_optimizers).
    dense_opt = pl.make_optimizers(dense, "fused", lr=0.01, eps=1e-12)
    sparse_opt = pl.make_optimizers(sparse, "sparse", lr=0.01, eps=1e-12)
    first, second = sentiment_batch(1, words=[2, 3, 4]), sentiment_batch(2, words=[5, 6])

    for model, optimizers in ((dense, dense_opt), (sparse, sparse_opt)):
        train_steps(model, optimizers, [first])
    assert_same_parameters(dense, sparse)  # step 1: every moment starts at zero in both

    before = dense.embeddings.trained.weight.detach().clone()
    for model, optimizers in ((dense, dense_opt), (sparse, sparse_opt)):
        train_steps(model, optimizers, [second])
    dense_rows = dense.embeddings.trained.weight.detach()
    sparse_rows = sparse.embeddings.trained.weight.detach()
    # Rows 5, 6 (first used now) get the same update from both optimizers...
    torch.testing.assert_close(sparse_rows[5:7], dense_rows[5:7])
    # ...row 3 (used before, not now): dense Adam keeps moving it on its momentum, SparseAdam
    # leaves it where step 1 put it.
    assert not torch.allclose(dense_rows[3], before[3])
    torch.testing.assert_close(sparse_rows[3], before[3])


def test_sparse_optimizer_needs_a_sparse_embedding():
    with pytest.raises(ValueError, match="sparse=True"):
        pl.make_optimizers(sentiment_model(), "sparse", lr=0.01)


def test_foreach_weight_averaging_equals_the_per_parameter_one(tmp_path):
    cfg = compose_config(tmp_path, ["experiment=sst2_bilstm", "callbacks=weight_averaging"])
    with open_dict(cfg):
        cfg.callbacks.weight_averaging.multi_avg_fn.decay = 0.9
    model = sentiment_model()
    fast = pl.configured_averaging(cfg, model)  # the config's: one foreach lerp
    per_parameter = pl.configured_averaging(cfg, model, "per parameter")
    assert fast.multi_avg_fn is not None and per_parameter.avg_fn is not None
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator))
        per_parameter.update_parameters(model)
        fast.update_parameters(model)
    assert not torch.allclose(fast.module.classifier.weight, model.classifier.weight)
    assert_same_parameters(per_parameter.module, fast.module, atol=1e-5)
    assert pl.configured_averaging(cfg, model, "none") is None


# -- padded vs packed on whole models -------------------------------------------------------------
def tagger_and_batch() -> tuple[SequenceTagger, Batch]:
    torch.manual_seed(0)
    model = SequenceTagger(vocab_size=VOCAB, num_chars=12, tags=["A", "B", "C"],
                           encoder={"cell": "lstm", "hidden_size": 8, "bidirectional": True},
                           embedding_dim=6, chars={"embedding_dim": 4, "hidden_size": 5},
                           dropout=0.0)
    rng = random.Random(0)
    examples = []
    for length in (5, 2, 7, 1):
        words = [rng.randrange(2, VOCAB) for _ in range(length)]
        spelled = [[rng.randrange(2, 12) for _ in range(rng.randint(1, 6))] for _ in words]
        examples.append((words, [rng.randrange(3) for _ in words], spelled))
    return model, collate_tagging(examples)


@pytest.mark.parametrize("task", ["sentiment", "tagging"])
def test_whole_models_give_identical_results_padded_or_packed(task):
    if task == "sentiment":
        padded, batch = sentiment_model(dropout=0.0, embedding_dropout=0.0), sentiment_batch(3)
    else:
        padded, batch = tagger_and_batch()
    packed = pl.set_variable_length(copy.deepcopy(padded), "packed")
    encoders = [m for m in packed.modules() if isinstance(m, RNNEncoder)]
    assert len(encoders) == (2 if task == "tagging" else 1)  # the char encoder switched too
    assert all(m.variable_length == "packed" for m in encoders)

    losses = [pl.task_loss(model, batch)[0] for model in (padded, packed)]
    torch.testing.assert_close(losses[1], losses[0])
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(padded.named_parameters(), packed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


# -- the benchmark's plain loop does Lightning's work ---------------------------------------------
@pytest.fixture
def tiny_sst(tmp_path) -> list[str]:
    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "not", "fun", "dull", "the", "a"]
    lines = [f"{rng.randint(0, 1)} " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))
             for _ in range(60)]
    train_file = write_lines(tmp_path / "data" / "train.txt", lines[:48])
    val_file = write_lines(tmp_path / "data" / "val.txt", lines[48:])
    return ["data=text_classification", f"data.train_path={train_file}",
            f"data.val_path={val_file}"]


class RecordingSpec(pl.ArmSpec):
    """An arm spec that keeps the weights its arm started from."""

    def build(self, cfg, datamodule, reference):
        self.initial = {k: v.clone() for k, v in reference.state_dict().items()}
        return super().build(cfg, datamodule, reference)


@pytest.mark.parametrize(("averaging", "adversarial"), [(False, False), (True, False),
                                                         (False, True)],
                         ids=["plain", "weight_averaging", "adversarial"])
def test_shadow_plain_loop_ends_with_the_weights_lightning_trained(tmp_path, tiny_sst, averaging,
                                                                   adversarial):
    """Same initial weights, batches, optimizer and clipping, no dropout: after one epoch the
    plain loop that the overhead benchmark times must hold exactly Lightning's weights (with
    the weight-averaging callback: Lightning ends on the average, so must the plain loop's;
    with adversarial training, the plain loop's loss has its perturbed half too)."""
    cfg = compose_config(tmp_path, [
        *tiny_sst, "trainer.max_epochs=1", "data.batch_size=8", "test=false",
        f"model.adversarial_epsilon={1.0 if adversarial else 0.0}",
        "model.embedding_dim=8", "model.encoder.hidden_size=8", "model.dropout=0.0",
        "model.embedding_dropout=0.0", "model.word_dropout=0.0",
        *(["callbacks=weight_averaging", "callbacks.weight_averaging.multi_avg_fn.decay=0.5"]
          if averaging else ["callbacks=none"]),
    ])
    spec = RecordingSpec("plain loop")
    pl.PLANS["test"] = plan = {"cfg": cfg, "specs": [spec]}
    with open_dict(cfg):
        cfg.callbacks = {**(cfg.callbacks or {}),
                         "shadow": {"_target_": "plain_loops.ShadowArms", "plan": "test"}}
    _, objects = train(cfg)

    framework, plain = plan["arms"]
    assert framework.model is objects["model"]
    assert [m.batches for m in framework.epochs] == [m.batches for m in plain.epochs] == [6]
    assert framework.epochs[0].tokens == plain.epochs[0].tokens
    assert (plain.averaged is not None) == averaging
    assert not torch.allclose(plain.model.classifier.weight, spec.initial["net.classifier.weight"])
    assert_same_parameters(framework.model, plain.evaluated_model)
    if averaging:  # and the average is not simply the last weights
        assert not torch.allclose(plain.model.classifier.weight,
                                  plain.evaluated_model.classifier.weight)


def test_disturbed_repetitions_are_left_out_of_the_ratios():
    def arm(speeds, disturbed=()):
        a = pl.Arm("x", None, [], batches=lambda epoch: [])
        a.epochs = [pl.Measurement(1.0, s, 1, others=0.9 if i in disturbed else 0.0)
                    for i, s in enumerate(speeds)]
        return a

    fast, slow = arm([100, 200, 200, 900], disturbed={3}), arm([100, 100, 50, 100])
    assert pl.clean_rounds([fast, slow]) == [1, 2]  # round 0 is the warm-up
    assert benchmark.ratios(fast, slow) == [2.0, 4.0]
    assert pl.steady_tokens_per_second(fast.epochs) == 200
    every = arm([100, 100], disturbed={0, 1})
    assert benchmark.ratios(every, arm([50, 50])) == [2.0]  # none clean: all kept


# -- the document --------------------------------------------------------------------------------
def test_rerunning_one_section_keeps_the_others_and_the_summary_follows(tmp_path):
    path = tmp_path / "benchmarks.md"
    benchmark.write_document(path, {
        "overhead": benchmark.block("overhead", "## 1\nold overhead", "cmd a", "then", 1.0,
                                    {"overhead_sentiment": 0.90}),
        "data": benchmark.block("data", "## 6\ndata figures", "cmd a", "then", 1.0,
                                {"index_charlm": 0.25}),
    })
    benchmark.write_document(path, {
        "overhead": benchmark.block("overhead", "## 1\nnew overhead", "cmd b", "now", 1.0,
                                    {"overhead_sentiment": 0.99}),
        "varlen": benchmark.block("varlen", "## 3\nvarlen figures", "cmd b", "now", 1.0),
    })
    text = path.read_text()
    assert text.startswith("# Benchmarks (CPU)")
    assert "new overhead" in text and "old overhead" not in text
    assert text.index("new overhead") < text.index("varlen figures") < text.index("data figures")
    assert text.count("<!-- section:") == 4  # three sections and the summary
    glance = text[text.index("<!-- section:summary -->"):text.index("## 1")]
    assert "0.990x" in glance and "0.900x" not in glance  # the new overhead figure
    assert "0.25 s" in glance  # the kept section's figure
