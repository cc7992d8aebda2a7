"""Adversarial training on word vectors: the perturbation computed by hand, the total's gradient
with the perturbation held constant, one perturbation per example (so padding and batch company
change nothing)."""

import pytest
import torch
import torch.nn.functional as F

from seqmodels.data.batching import collate_classification
from seqmodels.errors import ConfigError
from seqmodels.models.adversarial import adversarial_loss
from seqmodels.models.sentiment import SentimentClassifier


def test_a_linear_loss_rises_by_epsilon_times_each_examples_gradient_norm():
    torch.manual_seed(0)
    w = torch.randn(2, 3, 4)  # a different gradient for each example
    vectors = torch.randn(2, 3, 4, requires_grad=True)
    total = adversarial_loss(lambda v: (v * w).sum(), vectors, epsilon=0.5)
    clean = (vectors * w).sum()
    # Moving example b by 0.5 * w_b / |w_b| adds 0.5 * |w_b| to a linear loss.
    expected = 2 * clean + 0.5 * w.flatten(1).norm(dim=1).sum()
    torch.testing.assert_close(total, expected)


def test_the_total_gradient_treats_the_perturbation_as_a_constant():
    vectors = torch.tensor([[[1.0, 2.0], [0.0, -1.0]]], requires_grad=True)
    total = adversarial_loss(lambda v: (v ** 2).sum(), vectors, epsilon=0.3)
    total.backward()
    v = vectors.detach()
    r = 0.3 * (2 * v) / (2 * v).norm()  # along the gradient 2v, norm 0.3
    torch.testing.assert_close(vectors.grad, 2 * v + 2 * (v + r))


def model(epsilon: float) -> SentimentClassifier:
    torch.manual_seed(0)
    return SentimentClassifier(30, 2, {"cell": "lstm", "hidden_size": 8, "bidirectional": True},
                               embedding_dim=6, pooling="max", adversarial_epsilon=epsilon)


EXAMPLES = [([3, 4, 5, 6, 7], 0), ([8], 1), ([9, 10, 11], 1)]


def test_each_sentence_gets_its_own_perturbation_whatever_the_padding():
    classifier = model(epsilon=2.0).train()  # no dropout is configured: deterministic
    together = classifier.training_objective(collate_classification(EXAMPLES))
    alone = [classifier.training_objective(collate_classification([e])) for e in EXAMPLES]
    torch.testing.assert_close(together, torch.stack(alone).mean())
    plain = model(epsilon=0.0).train()
    batch = collate_classification(EXAMPLES)
    clean = F.cross_entropy(plain(batch.tokens, batch.lengths), batch.targets)
    torch.testing.assert_close(plain.training_objective(batch), clean)
    assert together > 2 * clean  # the perturbed loss is the larger half


def test_a_negative_epsilon_is_refused():
    with pytest.raises(ConfigError, match="adversarial_epsilon"):
        model(epsilon=-1.0)


def test_the_logged_training_loss_is_the_clean_one_and_the_adversarial_one_is_beside_it():
    """train/loss is comparable with val/loss (the clean loss), train/adversarial_loss is the
    other term, and the step minimises their sum."""
    classifier = model(epsilon=2.0).train()
    batch = collate_classification(EXAMPLES)
    logged = {}
    classifier.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    total = classifier.training_loss(batch, 0)
    plain = model(epsilon=0.0).train()
    clean = F.cross_entropy(plain(batch.tokens, batch.lengths), batch.targets)
    torch.testing.assert_close(logged["train/loss"], clean.detach())
    torch.testing.assert_close(logged["train/loss"] + logged["train/adversarial_loss"],
                               total.detach())
    assert logged["train/adversarial_loss"] > logged["train/loss"]
    torch.testing.assert_close(total, classifier.training_objective(batch))
