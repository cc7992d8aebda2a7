"""The tagging datamodule and the sequence tagger: vocabularies, batches, masked loss and
metrics against a hand computation, padding invariance, the bidirectional lesson ("Teddy bears"
vs "Teddy Roosevelt"), pretrained vectors, and the train/eval command paths."""

import logging
import math
import random

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from seqmodels.cli.eval import evaluate
from seqmodels.cli.train import train
from seqmodels.data.batching import IGNORE_INDEX, Batch
from seqmodels.data.chars import clip_word
from seqmodels.data.tagging import TaggingDataModule, collate_tagging
from seqmodels.data.vocab import PAD_ID, UNK_ID
from seqmodels.errors import ConfigError, DataError
from seqmodels.models.tag_metrics import tag_report
from seqmodels.models.tagger import SequenceTagger
from tests.conftest import compose_config, write_lines

pytestmark = pytest.mark.usefixtures("one_thread")


ENCODER = {"hidden_size": 8, "num_layers": 1, "bidirectional": True}
CHARS = {"embedding_dim": 4, "hidden_size": 5}

# A toy tagged language: determiners, adjectives, nouns, verbs.
LEXICON = {"DET": ["the", "a", "The", "A"], "ADJ": ["big", "red", "old"],
           "NOUN": ["dog", "cat", "Bird", "tree"], "VERB": ["sees", "likes", "runs"]}


def toy_sentences(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        pattern = ["DET", "ADJ", "NOUN", "VERB"][: rng.randint(2, 4)]
        if rng.random() < 0.5:
            pattern += ["DET", "NOUN"]
        sentences.append(([rng.choice(LEXICON[t]) for t in pattern], pattern))
    return sentences


def write_conllu(path, sentences):
    lines = []
    for number, (tokens, tags) in enumerate(sentences, start=1):
        lines.append(f"# sent_id = {number}")
        lines += ["\t".join([str(i), w, w.lower(), t, "_", "_", "0", "dep", "_", "_"])
                  for i, (w, t) in enumerate(zip(tokens, tags), start=1)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def toy_files(tmp_path):
    return {split: write_conllu(tmp_path / f"{split}.conllu", toy_sentences(n, seed))
            for split, n, seed in (("train", 40, 0), ("dev", 12, 1), ("test", 12, 2))}


def toy_datamodule(files, **kwargs) -> TaggingDataModule:
    dm = TaggingDataModule(str(files["train"]), str(files["dev"]), str(files["test"]),
                           batch_size=8, **kwargs)
    dm.setup()
    return dm


# -- data ----------------------------------------------------------------------------------
def test_vocabularies_from_train_only(tmp_path):
    train = write_conllu(tmp_path / "train.conllu",
                         [(["The", "dog", "runs"], ["DET", "NOUN", "VERB"]),
                          (["the", "Dog"], ["DET", "NOUN"])])
    dev = write_conllu(tmp_path / "dev.conllu", [(["the", "zebra"], ["DET", "NOUN"])])
    dm = TaggingDataModule(str(train), str(dev), lowercase=True)
    dm.setup("fit")
    words, tags, chars = dm.vocabs["tokens"], dm.vocabs["tags"], dm.vocabs["chars"]
    assert words.itos == ["<pad>", "<unk>", "dog", "the", "runs"]  # lower-cased, by frequency
    assert tags.itos == ["DET", "NOUN", "VERB"] and not tags.has_specials
    assert "T" in chars and "D" in chars and "z" not in chars  # chars keep case, train only
    word_ids, tag_ids, char_ids = dm.splits["val"].items[0]
    assert word_ids == [words.index("the"), UNK_ID]  # "zebra" was never seen in training
    assert tag_ids == [0, 1]
    assert char_ids[1] == [UNK_ID, chars.index("e"), UNK_ID, chars.index("r"), UNK_ID]
    assert dm.model_sizes() == {"vocab_size": 5, "trained_vocab_size": 5, "num_chars": len(chars),
                                "tags": ["DET", "NOUN", "VERB"]}


def test_unseen_tag_at_evaluation_names_tag_file_and_line(tmp_path):
    train = write_conllu(tmp_path / "train.conllu", [(["a", "dog"], ["DET", "NOUN"])])
    dev = write_conllu(tmp_path / "dev.conllu", [(["dogs", "run"], ["NOUN", "VERB"])])
    dm = TaggingDataModule(str(train), str(dev))
    with pytest.raises(DataError, match="tag 'VERB' never occurs in the training data") as error:
        dm.setup("fit")
    assert error.value.path == dev and error.value.line == 3
    assert "map it to a known tag" in str(error.value)


def test_collate_pads_targets_and_characters():
    examples = [([5, 6], [0, 1], [[3, 4, 5], [6]]), ([7], [2], [[8, 9]])]
    batch = collate_tagging(examples)
    assert batch.tokens.tolist() == [[5, 6], [7, PAD_ID]]
    assert batch.lengths.tolist() == [2, 1]
    assert batch.targets.tolist() == [[0, 1], [2, IGNORE_INDEX]]
    assert batch.chars.padded().tolist() == [[[3, 4, 5], [6, 0, 0]], [[8, 9, 0], [0, 0, 0]]]


def test_clip_word_keeps_both_ends():
    assert clip_word("walking", 30) == "walking"
    assert clip_word("http://example.com/page", 8) == "httppage"
    assert len(clip_word("x" * 100, 7)) == 7


def test_column_format_datamodule(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("-DOCSTART- O\n\nEU B-ORG\nrejects O\n\nPeter B-PER\nsays O\n")
    dm = TaggingDataModule(str(train), str(train), format="column", tag_column=-1)
    dm.setup("fit")
    assert dm.vocabs["tags"].itos == ["B-ORG", "B-PER", "O"]
    with pytest.raises(DataError, match="give a column index"):
        TaggingDataModule(str(train), format="column", tag_column="upos")


def test_missing_ewt_files_offline_say_where_to_get_them(tmp_path):
    dm = TaggingDataModule(str(tmp_path / "ud_ewt" / "en_ewt-ud-train.conllu"), dataset="ud_ewt",
                           data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match="en_ewt-ud-train.conllu.*downloading is switched off"):
        dm.prepare_data()


# -- (1) masked loss and metrics against a hand computation -------------------------------------
def test_masked_loss_and_metrics_equal_hand_computation():
    tags = ["A", "B", "C"]
    model = SequenceTagger(vocab_size=10, num_chars=5, tags=tags, encoder=ENCODER, chars=None)
    # Two sentences, lengths 3 and 2; token 1 (<unk>) marks the out-of-vocabulary words.
    tokens = torch.tensor([[4, UNK_ID, 5], [UNK_ID, 6, PAD_ID]])
    targets = torch.tensor([[0, 1, 2], [1, 1, IGNORE_INDEX]])
    logits = torch.tensor([[[2.0, 0.5, 0.1], [0.3, 0.2, 1.0], [0.0, 0.1, 3.0]],
                           [[0.1, 2.0, 0.3], [1.5, 1.0, 0.0], [9.0, -9.0, 9.0]]])  # last: padding
    model.net.forward = lambda *args, **kwargs: logits
    batch = Batch(tokens, torch.tensor([3, 2]), targets)

    loss, _ = model._step(batch)
    real = [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 1), (1, 1, 1)]
    nll = [-math.log(math.exp(logits[b, t, y]) / sum(math.exp(v) for v in logits[b, t].tolist()))
           for b, t, y in real]
    assert loss.item() == pytest.approx(sum(nll) / len(nll), rel=1e-6)

    model._evaluate(batch, model.val_loss, model.val_metrics, model.val_oov)
    values = model.val_metrics.compute()
    # Predictions at real steps: A C C | B A  vs gold A B C | B B.
    assert values["val/acc"].item() == pytest.approx(3 / 5)
    # Per tag: A: tp1 fp1 fn0 -> P 1/2 R 1 F1 2/3; B: tp1 fp0 fn2 -> F1 1/2;
    # C: tp1 fp1 fn0 -> F1 2/3.
    assert values["val/f1"].item() == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # OOV tokens: (0,1) gold B predicted C (wrong), (1,0) gold B predicted B (right).
    assert model.val_oov.compute().item() == pytest.approx(1 / 2)
    assert model.val_loss.compute().item() == pytest.approx(sum(nll) / len(nll), rel=1e-6)


def test_per_tag_report_from_stat_scores():
    # Rows: tp, fp, tn, fn, support.
    stats = torch.tensor([[3, 1, 0, 1, 4], [0, 0, 0, 2, 2], [5, 2, 0, 0, 5]])
    rows, table = tag_report(["A", "B", "C"], stats)
    assert [r["tag"] for r in rows] == ["C", "A", "B"]  # most frequent first
    a = rows[1]
    assert (a["precision"], a["recall"], a["support"]) == (3 / 4, 3 / 4, 4)
    assert a["f1"] == pytest.approx(3 / 4)
    assert rows[2]["f1"] == 0.0  # never predicted: 0, not NaN
    assert table.splitlines()[1].split() == ["C", "0.7143", "1.0000", "0.8333", "5"]


# -- (2) padding invariance ----------------------------------------------------------------------
@pytest.mark.parametrize("chars", [None, CHARS], ids=["words", "words+chars"])
@pytest.mark.parametrize("variable_length", ["padded", "packed"])
def test_per_token_outputs_do_not_depend_on_padding(chars, variable_length):
    model = SequenceTagger(vocab_size=20, num_chars=12, tags=["A", "B", "C", "D"],
                           encoder={**ENCODER, "num_layers": 2,
                                    "variable_length": variable_length},
                           embedding_dim=6, chars=chars).eval()
    g = torch.Generator().manual_seed(1)
    examples = []
    for length in (5, 2, 7, 1):
        words = torch.randint(2, 20, (length,), generator=g).tolist()
        spelled = [torch.randint(1, 12, (int(torch.randint(1, 9, (1,), generator=g)),),
                                 generator=g).tolist() for _ in words]
        examples.append((words, [0] * length, spelled))
    batch = collate_tagging(examples)
    with torch.no_grad():
        batched = model(batch.tokens, batch.lengths, batch.chars)
        for row, example in enumerate(examples):
            single = collate_tagging([example])
            alone = model(single.tokens, single.lengths, single.chars)[0]
            n = len(example[0])
            torch.testing.assert_close(batched[row, :n], alone, atol=1e-5, rtol=1e-5)


# -- (3) the lesson of bidirectional RNNs ------------------------------------------------------
FILLERS = {"we": "PRON", "saw": "VERB", "big": "ADJ", "and": "CCONJ", "two": "NUM"}


def teddy_sentences(count: int, seed: int):
    """'teddy' is a NOUN before 'bears' and a PROPN before 'roosevelt', 50/50: only the NEXT
    token tells which."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        words, tags = [], []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.5:
                follower = rng.choice(["bears", "roosevelt"])
                words += ["teddy", follower]
                tags += ["NOUN", "NOUN"] if follower == "bears" else ["PROPN", "PROPN"]
            else:
                word = rng.choice(sorted(FILLERS))
                words.append(word)
                tags.append(FILLERS[word])
        examples.append((words, tags))
    return examples


def train_teddy_tagger(bidirectional: bool) -> tuple[float, float]:
    """Overall and 'teddy' validation accuracy of a tiny tagger after a short plain loop."""
    vocab = ["<pad>", "<unk>", "teddy", "bears", "roosevelt", *sorted(FILLERS)]
    tags = ["ADJ", "CCONJ", "NOUN", "NUM", "PRON", "PROPN", "VERB"]

    def encode(examples):  # no character features: one dummy character per word
        return [([vocab.index(w) for w in words], [tags.index(t) for t in labels],
                 [[UNK_ID]] * len(words)) for words, labels in examples]

    train_set, val_set = encode(teddy_sentences(600, 0)), encode(teddy_sentences(200, 1))
    torch.manual_seed(0)
    model = SequenceTagger(len(vocab), 2, tags, chars=None, embedding_dim=8, dropout=0.0,
                           encoder={"hidden_size": 16, "bidirectional": bidirectional})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    rng = random.Random(0)
    for _ in range(8):  # epochs
        rng.shuffle(train_set)
        for start in range(0, len(train_set), 32):
            loss, _ = model._step(collate_tagging(train_set[start : start + 32]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    batch = collate_tagging(val_set)
    with torch.no_grad():
        preds = model(batch.tokens, batch.lengths).argmax(dim=2)
    real = batch.targets != IGNORE_INDEX
    teddy = batch.tokens == vocab.index("teddy")
    correct = preds == batch.targets
    return (correct[real].float().mean().item(), correct[teddy].float().mean().item())


def test_bidirectional_tagger_sees_the_next_token_a_unidirectional_one_cannot():
    bi_acc, bi_teddy = train_teddy_tagger(bidirectional=True)
    uni_acc, uni_teddy = train_teddy_tagger(bidirectional=False)
    assert bi_acc >= 0.98 and bi_teddy >= 0.95
    # Left-to-right, 'teddy' is a coin flip (about 240 'teddy' tokens: 0.5 +- 0.03); everything
    # else it tags as well as the bidirectional model.
    assert 0.35 < uni_teddy < 0.65
    assert uni_acc < bi_acc - 0.05


def test_span_scheme_is_checked_against_the_tags():
    with pytest.raises(ConfigError, match="NOUN"):
        SequenceTagger(6, 3, ["NOUN", "VERB"], ENCODER, span_scheme="bio")


# -- (6) the experiment config, training, testing and seqmodels-eval ----------------------------
def tiny_overrides(files):
    return ["data.dataset=null", f"data.train_path={files['train']}",
            f"data.val_path={files['dev']}", f"data.test_path={files['test']}",
            "model.encoder.hidden_size=8", "model.embedding_dim=8",
            "model.chars.embedding_dim=4", "model.chars.hidden_size=4"]


def test_ewt_upos_experiment_composes_and_runs_fast_dev_run(tmp_path, toy_files, caplog):
    cfg = compose_config(tmp_path, ["experiment=ewt_upos", "debug=fdr", *tiny_overrides(toy_files)])
    assert cfg.model._target_ == "seqmodels.models.tagger.SequenceTagger"
    assert cfg.data._target_ == "seqmodels.data.tagging.TaggingDataModule"
    assert (cfg.monitor, cfg.monitor_mode) == ("val/acc", "max")
    with caplog.at_level(logging.INFO):
        metrics, objects = train(cfg)
    assert {"val/acc", "val/f1", "test/acc", "test/f1", "test/loss"} <= set(metrics)
    assert "per-tag results on the test split" in caplog.text
    assert {r["tag"] for r in objects["model"].test_report} == {"ADJ", "DET", "NOUN", "VERB"}


def test_trained_tagger_checkpoint_evaluates_the_same(tmp_path, toy_files):
    cfg = compose_config(tmp_path / "train", ["experiment=ewt_upos", "logger=csv",
                                              "callbacks=none", "trainer.max_epochs=3",
                                              "+trainer.enable_progress_bar=false",
                                              *tiny_overrides(toy_files)])
    metrics, objects = train(cfg)
    ckpt = tmp_path / "tagger.ckpt"
    objects["trainer"].save_checkpoint(ckpt)

    eval_cfg = compose_config(tmp_path / "eval", ["data=ud_ewt", f"ckpt_path={ckpt}",
                                                  *tiny_overrides(toy_files)[:4]],
                              config_name="eval")
    with open_dict(eval_cfg):
        eval_cfg.trainer.enable_progress_bar = False
    evaluated, _ = evaluate(eval_cfg)
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_tagger_learns_the_toy_language(toy_files):
    """A smoke test of the Lightning path: a few epochs separate the four tags."""
    dm = toy_datamodule(toy_files)
    model = SequenceTagger(**dm.model_sizes(), encoder={"hidden_size": 16, "bidirectional": True},
                           embedding_dim=16, chars=CHARS, dropout=0.0,
                           optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    model.vocabs = dm.vocabs
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert result["test/acc"] >= 0.95


def test_users_own_column_files_train_an_ner_tagger_with_span_metrics(tmp_path):
    """`data=column_tagging` plus `model.span_scheme=bio`: a NER tagger by config alone."""
    lines = ["-DOCSTART- -X- O", ""]
    for name, place in (("Peter Blackburn", "Brussels"), ("Anna Smith", "New York")) * 4:
        words = [*name.split(), "visits", *place.split(), "."]
        tags = ["B-PER", "I-PER", "O", "B-LOC", *["I-LOC"] * (len(place.split()) - 1), "O"]
        lines += [f"{w} NNP {t}" for w, t in zip(words, tags)] + [""]
    data = tmp_path / "ner.txt"
    data.write_text("\n".join(lines) + "\n")
    cfg = compose_config(tmp_path, [
        "data=column_tagging", "model=tagger", "model.span_scheme=bio", "monitor=val/span_f1",
        "debug=fdr", f"data.train_path={data}", f"data.val_path={data}", f"data.test_path={data}",
    ])
    metrics, objects = train(cfg)
    assert objects["datamodule"].vocabs["tags"].itos == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    assert {"val/span_f1", "val/span_precision", "test/span_recall"} <= set(metrics)


def test_users_own_conllu_files_with_xpos(tmp_path, toy_files):
    """`data=conllu data.tag_column=xpos`: the XPOS column becomes the tag set."""
    penn = {"DET": "DT", "ADJ": "JJ", "NOUN": "NN", "VERB": "VBZ"}
    text = toy_files["train"].read_text().splitlines()
    with_xpos = []
    for line in text:
        columns = line.split("\t")
        if len(columns) == 10:
            columns[4] = penn[columns[3]]
        with_xpos.append("\t".join(columns))
    train_file = write_lines(tmp_path / "train_xpos.conllu", with_xpos)
    overrides = ["data=conllu", "model=tagger", "debug=fdr", f"data.train_path={train_file}",
                 f"data.val_path={train_file}"]
    cfg = compose_config(tmp_path, [*overrides, "data.tag_column=xpos"])
    _, objects = train(cfg)
    assert objects["datamodule"].vocabs["tags"].itos == ["DT", "JJ", "NN", "VBZ"]
    # The dev file of the toy data has no XPOS at all: a clear error, not an empty tag.
    cfg = compose_config(tmp_path, [*overrides, "data.tag_column=xpos",
                                    f"data.val_path={toy_files['dev']}"])
    with pytest.raises(DataError, match="has no XPOS tag"):
        train(cfg)
