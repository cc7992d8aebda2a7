"""``seqmodels-predict``: classifier probabilities and tagger tags equal the model's own forward
pass on the same sentences, in input order across length sorting; the training run's
normalisation (lower-casing, word clipping) is applied; stdin, file and CLI paths; refusals."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from seqmodels.cli.eval import load_model
from seqmodels.cli.predict import predict
from seqmodels.cli.train import train
from seqmodels.data.batching import Batch
from seqmodels.data.chars import clip_word
from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.errors import ConfigError, DataError
from seqmodels.models.charlm import CharLanguageModel
from tests.conftest import compose_config, write_lines

# Checkpoints in the run directory, and nothing else the tests do not need.
QUIET = ["logger=csv", "callbacks=model_checkpoint", "test=false", "trainer.max_epochs=2",
         "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]

# Mixed case on purpose: the classifier is trained with data.lowercase=true.
SENTENCES = ["The film is Good", "a BAD , dull film", "Not good at all", "good", "bad bad",
             "the plot is not bad and the acting is good", "Dull", "not Dull"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    """A tiny classifier trained for two epochs through ``train()``: its checkpoint lies in a
    run directory beside the run's config_resolved.yaml."""
    root = tmp_path_factory.mktemp("classifier")
    lines = [f"{int('good' in s.lower() and 'not' not in s.lower())} {s}" for s in SENTENCES]
    train_path = write_lines(root / "train.txt", lines * 4)
    val_path = write_lines(root / "val.txt", lines)
    cfg = compose_config(root, [
        "data=text_classification", f"data.train_path={train_path}",
        f"data.val_path={val_path}", "data.lowercase=true", "data.batch_size=4",
        "model.embedding_dim=8", "model.encoder.hidden_size=8", "model.pooling=mean",
        "model.optimizer.lr=0.02", *QUIET])
    _, objects = train(cfg)
    return Path(objects["trainer"].checkpoint_callback.best_model_path)


def predict_cfg(ckpt, source, **options):
    return compose_config(Path(source).parent, [f"ckpt_path={ckpt}", f"input={source}",
                                                *(f"{k}={v}" for k, v in options.items())],
                          config_name="predict")


def run_predict(ckpt, source, **options) -> str:
    out = io.StringIO()
    predict(predict_cfg(ckpt, source, **options), out)
    return out.getvalue()


def expected_probs(model, sentences: list[str], lowercase: bool = True) -> list[list[float]]:
    """Each sentence alone through ``forward``, ids looked up by hand (unknown: <unk>)."""
    stoi = model.vocabs["tokens"].stoi
    rows = []
    with torch.no_grad():
        for sentence in sentences:
            words = [w.lower() if lowercase else w for w in sentence.split()]
            tokens = torch.tensor([[stoi.get(w, UNK_ID) for w in words]])
            rows.append(model(tokens, torch.tensor([len(words)])).softmax(-1)[0].tolist())
    return rows


# Probabilities are printed to 4 decimals: half a unit of the last one, and float noise.
PRINTED = 5e-5 + 1e-6


def assert_close(actual, expected) -> None:
    torch.testing.assert_close(torch.tensor(actual), torch.tensor(expected), rtol=0,
                               atol=PRINTED)


# -- classification -----------------------------------------------------------------------------
@pytest.mark.parametrize("output_format", ["tsv", "jsonl"])
def test_probabilities_equal_forward_softmax_in_input_order(tmp_path, classifier_ckpt,
                                                            output_format):
    model = load_model(classifier_ckpt).eval()
    labels = model.vocabs["labels"].itos
    # Lengths out of order, a word never seen in training, and blank lines (skipped).
    inputs = ["not good at all , zebra", "", "Good", "a BAD , dull film !", "   ", "dull"]
    source = write_lines(tmp_path / "in.txt", inputs)
    output = run_predict(classifier_ckpt, source, format=output_format, batch_size=2)
    kept = [(n, s) for n, s in enumerate(inputs, start=1) if s.strip()]
    expected = expected_probs(model, [s for _, s in kept])

    if output_format == "tsv":
        rows = list(csv.DictReader(io.StringIO(output), delimiter="\t"))
        assert list(rows[0]) == ["line", "text", "label", *(f"p({label})" for label in labels)]
        probs = [[float(row[f"p({label})"]) for label in labels] for row in rows]
    else:
        rows = [json.loads(line) for line in output.splitlines()]
        probs = [[row["probs"][label] for label in labels] for row in rows]
    assert [int(row["line"]) for row in rows] == [n for n, _ in kept]
    assert [row["text"] for row in rows] == [" ".join(s.split()) for _, s in kept]
    assert_close(probs, expected)
    assert [row["label"] for row in rows] == [labels[max(range(len(p)), key=p.__getitem__)]
                                              for p in expected]


def test_lowercase_comes_from_the_checkpoint_else_the_option(tmp_path, classifier_ckpt):
    model = load_model(classifier_ckpt).eval()
    assert "good" in model.vocabs["tokens"] and "GOOD" not in model.vocabs["tokens"]
    source = write_lines(tmp_path / "in.txt", ["GOOD Film"])

    def probs(ckpt, **options):
        row = json.loads(run_predict(ckpt, source, format="jsonl", **options))
        return [row["probs"][label] for label in model.vocabs["labels"].itos]

    lowered, as_written = expected_probs(model, ["GOOD Film"]), expected_probs(
        model, ["GOOD Film"], lowercase=False)
    assert lowered != as_written  # otherwise this test could not tell them apart
    assert probs(classifier_ckpt) == pytest.approx(lowered[0], abs=PRINTED)
    # The checkpoint carries the setting, so it may move anywhere.
    assert model.text_settings == {"encoding": "utf-8", "lowercase": True}
    moved = Path(shutil.copy(classifier_ckpt, tmp_path / "moved.ckpt"))
    assert probs(moved) == pytest.approx(lowered[0], abs=PRINTED)
    assert probs(moved, lowercase="false") == pytest.approx(as_written[0], abs=PRINTED)


def test_checkpoint_without_data_settings_is_refused(tmp_path, classifier_ckpt):
    """Even beside its run's config_resolved.yaml: no guessing at how the text was read."""
    old = torch.load(classifier_ckpt, weights_only=False)
    del old["seqmodels"]["data"]
    del old["seqmodels"]["text_settings"]
    ckpt = classifier_ckpt.parent / "old.ckpt"
    torch.save(old, ckpt)
    source = write_lines(tmp_path / "in.txt", ["good film"])
    try:
        with pytest.raises(ConfigError, match="records no data settings.*predates.*not written "
                                              "by seqmodels-train") as refused:
            run_predict(ckpt, source)
    finally:
        ckpt.unlink()
    assert "\n" not in str(refused.value)


def test_classifier_with_character_features(tmp_path):
    """Character ids are spelled (and long words clipped) as in training: probabilities equal
    ``forward`` on ids and characters looked up by hand."""
    lines = [f"{int('good' in s.lower() and 'not' not in s.lower())} {s}" for s in SENTENCES]
    train_path = write_lines(tmp_path / "train.txt", lines * 2)
    cfg = compose_config(tmp_path, [
        "data=text_classification", f"data.train_path={train_path}",
        f"data.val_path={train_path}", "data.lowercase=true", "data.batch_size=4",
        "data.char_features=true", "data.max_word_length=4", "model.embedding_dim=8",
        "model.encoder.hidden_size=8", "model.chars={embedding_dim: 4, hidden_size: 3}",
        *QUIET])
    _, objects = train(cfg)
    ckpt = objects["trainer"].checkpoint_callback.best_model_path
    model = load_model(ckpt).eval()
    inputs = ["goodness gracious", "not dull", "zebra"]
    rows = [json.loads(line) for line in run_predict(
        ckpt, write_lines(tmp_path / "in.txt", inputs), format="jsonl").splitlines()]

    words, chars = model.vocabs["tokens"].stoi, model.vocabs["chars"].stoi
    expected = []
    with torch.no_grad():
        for sentence in inputs:
            tokens = sentence.split()
            spelled = [[chars.get(c, UNK_ID) for c in clip_word(w, 4)] for w in tokens]
            width = max(map(len, spelled))
            char_ids = torch.tensor([[c + [PAD_ID] * (width - len(c)) for c in spelled]])
            ids = torch.tensor([[words.get(w, UNK_ID) for w in tokens]])
            probs = model(ids, torch.tensor([len(tokens)]), char_ids).softmax(-1)[0]
            expected.append(probs.tolist())
    labels = model.vocabs["labels"].itos
    assert_close([[row["probs"][label] for label in labels] for row in rows], expected)


def test_stdin_to_stdout_through_the_command_line(tmp_path, classifier_ckpt):
    model = load_model(classifier_ckpt).eval()
    result = subprocess.run(
        [sys.executable, "-m", "seqmodels.cli.predict", f"ckpt_path={classifier_ckpt}", "input=-",
         "format=jsonl", "device=cpu"],
        input="Not good at all\n\ngood\n", capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but records
    assert [row["line"] for row in rows] == [1, 3]
    labels = model.vocabs["labels"].itos
    assert_close([[row["probs"][label] for label in labels] for row in rows],
                 expected_probs(model, ["Not good at all", "good"]))
    assert not (tmp_path / "outputs").exists()  # no run directory


def test_output_file_and_refusals(tmp_path, classifier_ckpt):
    source = write_lines(tmp_path / "in.txt", ["good"])
    target = tmp_path / "out.tsv"
    cfg = predict_cfg(classifier_ckpt, source, output=target)
    assert predict(cfg) == 1
    assert target.read_text().splitlines()[1].startswith("1\tgood\t")

    blank = write_lines(tmp_path / "blank.txt", ["", "  "])
    with pytest.raises(DataError, match="only blank lines"):
        run_predict(classifier_ckpt, blank)
    with pytest.raises(ConfigError, match="for tagging checkpoints"):
        run_predict(classifier_ckpt, source, input_format="conllu")
    with pytest.raises(ConfigError, match="format='csv' is not one of"):
        run_predict(classifier_ckpt, source, format="csv")


# -- encodings ----------------------------------------------------------------------------------
FRENCH = [("1", "un café délicieux"), ("0", "une soirée ratée"), ("1", "très bon café"),
          ("0", "ratée et très ennuyeuse")]


def test_input_is_read_in_the_training_encoding_unless_told_otherwise(tmp_path):
    """A classifier trained on Latin-1 data reads Latin-1 input, from a file and from stdin,
    with its accented words found in the vocabulary; ``encoding=`` overrides it."""
    train_path = tmp_path / "train.txt"
    train_path.write_bytes("".join(f"{y} {s}\n" for y, s in FRENCH * 4).encode("latin-1"))
    cfg = compose_config(tmp_path, [
        "data=text_classification", f"data.train_path={train_path}",
        f"data.val_path={train_path}", "data.encoding=latin-1", "data.batch_size=4",
        "model.embedding_dim=8", "model.encoder.hidden_size=8", *QUIET])
    _, objects = train(cfg)
    ckpt = objects["trainer"].checkpoint_callback.best_model_path
    model = load_model(ckpt).eval()
    assert model.text_settings == {"encoding": "latin-1", "lowercase": False}
    assert {"café", "soirée", "ratée", "très"} <= set(model.vocabs["tokens"].itos)

    inputs = ["très bon café", "une soirée ratée"]
    source = tmp_path / "in.txt"
    source.write_bytes("".join(f"{s}\n" for s in inputs).encode("latin-1"))
    rows = [json.loads(line) for line in run_predict(ckpt, source, format="jsonl").splitlines()]
    assert [row["text"] for row in rows] == inputs
    labels = model.vocabs["labels"].itos
    expected = expected_probs(model, inputs, lowercase=False)
    assert_close([[row["probs"][label] for label in labels] for row in rows], expected)

    result = subprocess.run(
        [sys.executable, "-m", "seqmodels.cli.predict", f"ckpt_path={ckpt}", "input=-",
         "format=jsonl", "device=cpu"],
        input=source.read_bytes(), capture_output=True, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["text"] for line in result.stdout.decode().splitlines()] == inputs

    # Told otherwise: the same bytes are not UTF-8 ("très": t r, then 0xe8 at byte 2).
    with pytest.raises(DataError, match=r"in.txt:1: invalid UTF-8 at byte offset 2 \(byte "
                                        r"0xe8\); if the file is in another encoding, name it: "
                                        "encoding=latin-1"):
        run_predict(ckpt, source, encoding="utf-8")
    utf8 = write_lines(tmp_path / "utf8.txt", inputs)
    assert [json.loads(line)["text"] for line in run_predict(
        ckpt, utf8, format="jsonl", encoding="utf-8").splitlines()] == inputs
    with pytest.raises(ConfigError, match="^encoding='latin-9x' is not a Python text encoding"):
        run_predict(ckpt, source, encoding="latin-9x")


# -- tagging ------------------------------------------------------------------------------------
TAGGED = [("The dog sees a cat", "DET NOUN VERB DET NOUN"),
          ("a big Bird runs", "DET ADJ NOUN VERB"),
          ("the old tree", "DET ADJ NOUN"),
          ("A red cat likes the dog", "DET ADJ NOUN VERB DET NOUN")]


def write_conllu(path, sentences):
    lines = []
    for words, tags in sentences:
        lines.append("# text = " + " ".join(words))
        lines += ["\t".join([str(i), w, "_", t, "_", "_", "0", "dep", "_", "_"])
                  for i, (w, t) in enumerate(zip(words, tags), start=1)]
        lines.append("")
    return write_lines(path, lines)


@pytest.fixture(scope="module")
def tagger_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tagger")
    sentences = [(s.split(), t.split()) for s, t in TAGGED]
    train_path = write_conllu(root / "train.conllu", sentences * 5)
    val_path = write_conllu(root / "dev.conllu", sentences)
    cfg = compose_config(root, [
        "data=conllu", f"data.train_path={train_path}", f"data.val_path={val_path}",
        "data.max_word_length=3", "data.batch_size=4", "model=tagger", "model.embedding_dim=8",
        "model.encoder.hidden_size=8", "model.chars.embedding_dim=4",
        "model.chars.hidden_size=4", *QUIET])
    _, objects = train(cfg)
    return Path(objects["trainer"].checkpoint_callback.best_model_path)


def expected_tags(model, sentence: list[str], max_word_length: int = 3) -> list[str]:
    """The tagger's argmax on one sentence, with ids and clipped spellings made by hand."""
    words, chars = model.vocabs["tokens"], model.vocabs["chars"]
    spelled = [[chars.stoi.get(c, UNK_ID) for c in clip_word(w, max_word_length)]
               for w in sentence]
    width = max(map(len, spelled))
    char_ids = torch.tensor([[s + [PAD_ID] * (width - len(s)) for s in spelled]])
    tokens = torch.tensor([[words.stoi.get(w, UNK_ID) for w in sentence]])
    with torch.no_grad():
        logits = model(tokens, torch.tensor([len(sentence)]), char_ids)
    return [model.tags[i] for i in logits[0].argmax(-1).tolist()]


def parse_conll(text: str) -> list[list[tuple[str, str]]]:
    assert text.endswith("\n\n")
    return [[tuple(line.split("\t")) for line in block.split("\n")]
            for block in text.strip("\n").split("\n\n")]


def test_tagger_output_lines_up_with_tokens_and_equals_argmax(tmp_path, tagger_ckpt):
    model = load_model(tagger_ckpt).eval()
    assert model.embeddings.chars is not None
    inputs = ["the Bird sees a dog and the cat", "Birds", "", "a cat likes the Teddybear !"]
    source = write_lines(tmp_path / "in.txt", inputs)
    sentences = [s.split() for s in inputs if s]
    blocks = parse_conll(run_predict(tagger_ckpt, source, batch_size=2))
    assert [[w for w, _ in block] for block in blocks] == sentences
    assert [[t for _, t in block] for block in blocks] == [expected_tags(model, s)
                                                           for s in sentences]

    rows = [json.loads(line) for line in run_predict(tagger_ckpt, source, format="jsonl")
            .splitlines()]
    assert [(r["line"], r["tokens"]) for r in rows] == [(1, sentences[0]), (2, sentences[1]),
                                                        (4, sentences[2])]
    assert [r["tags"] for r in rows] == [[t for _, t in block] for block in blocks]


def test_tagger_reads_conllu_and_column_input(tmp_path, tagger_ckpt):
    model = load_model(tagger_ckpt).eval()
    sentences = [["A", "red", "Bird", "runs"], ["the", "dog"]]
    conllu = write_conllu(tmp_path / "in.conllu", [(s, ["_"] * len(s)) for s in sentences])
    # A multiword-token line carries no word of its own.
    text = conllu.read_text().replace("1\tthe", "1-2\tthedog\t_\t_\t_\t_\t_\t_\t_\t_\n1\tthe")
    conllu.write_text(text)
    column = write_lines(tmp_path / "in.txt", ["-DOCSTART- O", "", "A x", "red x", "Bird x",
                                               "runs x", "", "the x", "dog x"])
    expected = [list(zip(s, expected_tags(model, s))) for s in sentences]
    for source, input_format in ((conllu, "conllu"), (column, "column")):
        output = run_predict(tagger_ckpt, source, input_format=input_format)
        assert parse_conll(output) == expected

    broken = write_lines(tmp_path / "broken.conllu", ["1\tthe\t_\tDET"])
    with pytest.raises(DataError, match=r"broken.conllu:1: expected 10 tab-separated"):
        run_predict(tagger_ckpt, broken, input_format="conllu")


def test_tagger_word_clipping_comes_from_the_checkpoint(tmp_path, tagger_ckpt):
    model = load_model(tagger_ckpt).eval()
    assert model.text_settings == {"encoding": "utf-8", "lowercase": False, "max_word_length": 3}
    sentence = ["the", "Teddybear"]
    source = write_lines(tmp_path / "in.txt", [" ".join(sentence)])
    moved = shutil.copy(tagger_ckpt, tmp_path / "moved.ckpt")  # away from its run directory
    assert parse_conll(run_predict(moved, source)) == [
        list(zip(sentence, expected_tags(model, sentence, max_word_length=3)))]


# -- a language model is refused ----------------------------------------------------------------
def test_char_lm_checkpoint_is_refused_pointing_to_generate(tmp_path):
    vocab = Vocab(["<pad>", "<unk>", "a", "b"])
    model = CharLanguageModel(len(vocab), {"cell": "gru", "hidden_size": 4}, embedding_dim=4)
    model.vocabs = {"chars": vocab}
    batch = Batch(torch.tensor([[2, 3, 2]]), torch.tensor([3]), torch.tensor([[3, 2, 3]]))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader([batch], batch_size=None))
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)
    source = write_lines(tmp_path / "in.txt", ["ab"])
    with pytest.raises(ConfigError, match="language model.*use seqmodels-generate"):
        run_predict(ckpt, source)
