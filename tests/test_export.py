"""``seqmodels-export`` (issue 26): the exported graph in onnxruntime equals the PyTorch
network for every task and cell (stacked, bidirectional, each combine mode, character
features) on a batch of sentences of different lengths, one of length 1; the exported char LM
writes the checkpoint's greedy text; through the commands from a directory outside the repo,
predicting from the export equals predicting from the checkpoint line by line, without torch
imported; bad input is refused in one line and leaves nothing behind."""

import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from seqmodels.cli.eval import load_model
from seqmodels.cli.export import export
from seqmodels.cli.predict import predict as predict_checkpoint
from seqmodels.cli.predict import read_sentences as checkpoint_reader
from seqmodels.cli.train import train
from seqmodels.data.chars import SpelledWords, clip_word
from seqmodels.data.vocab import Vocab
from seqmodels.errors import ConfigError
from seqmodels.export.writer import export_model, task_spec, write_graph
from seqmodels.inference import bundle, commands
from seqmodels.models.charlm import CharLanguageModel
from seqmodels.models.embeddings import WordEmbeddings
from seqmodels.models.networks import CharLMNet, SentenceClassifierNet, TaggerNet
from tests.conftest import compose_config, write_lines

pytestmark = pytest.mark.usefixtures("one_thread")
BIN = Path(sys.executable).parent
CHARS = Vocab(["<pad>", "<unk>", *"abcdefghijklmnop"])
TOLERANCE = 1e-4


def word_batch(lengths, vocab=40, width=5, seed=0):
    """tokens, lengths and (B, T, W) character ids, padded, with words of 0..width chars."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    steps = int(lengths.max())
    real = torch.arange(steps) < lengths.unsqueeze(1)
    tokens = torch.randint(2, vocab, (len(lengths), steps), generator=generator) * real
    chars = torch.randint(2, len(CHARS), (len(lengths), steps, width), generator=generator)
    spelled = torch.randint(0, width + 1, (len(lengths), steps, 1), generator=generator)
    chars = chars * (torch.arange(width) < spelled) * real.unsqueeze(2)
    return tokens, lengths, chars


def run_onnx(path, feed: dict) -> list:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feed.items()})


# -- the graphs, task by task and cell by cell ----------------------------------------------------
# (cell, layers, bidirectional, combine, character features[, pooling])
CLASSIFIERS = [("rnn", 1, False, "concat", False, "final"),
               ("lstm", 2, True, "concat", True, "mean"), ("gru", 1, True, "sum", False, "max"),
               ("mingru", 2, True, "mul", False, "final"),
               ("minlstm", 1, True, "concat", True, "mean")]
TAGGERS = [("rnn", 1, True, "sum", True), ("lstm", 2, True, "concat", True),
           ("gru", 1, False, "concat", False), ("mingru", 1, True, "mul", True),
           ("minlstm", 2, True, "concat", True)]


def word_net(kind, cell, layers, bidirectional, combine, chars, pooling="final"):
    torch.manual_seed(0)
    embeddings = WordEmbeddings(40, 8, num_chars=len(CHARS),
                                chars={"embedding_dim": 4, "hidden_size": 3, "cell": cell}
                                if chars else None)
    encoder = {"hidden_size": 6, "cell": cell, "num_layers": layers,
               "bidirectional": bidirectional, "combine": combine}
    if kind == "classification":
        return SentenceClassifierNet(embeddings, encoder, 3, pooling=pooling).eval()
    return TaggerNet(embeddings, encoder, 5).eval()


@pytest.mark.parametrize("kind, case", [("classification", c) for c in CLASSIFIERS]
                         + [("tagging", c) for c in TAGGERS],
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v)))
def test_exported_word_model_equals_the_network(tmp_path, kind, case):
    net = word_net(kind, *case)
    chars = case[4]
    fake = types.SimpleNamespace(task=kind, net=net, vocabs={"chars": CHARS} if chars else {})
    write_graph(task_spec(fake), tmp_path / "model.onnx")
    for seed, sizes in enumerate(([6, 3, 1, 4], [1])):  # other sizes than traced
        tokens, lengths, char_ids = word_batch(sizes, seed=seed)
        feed = {"tokens": tokens, "lengths": lengths}
        spelled = None
        if chars:  # the runner's numpy layout of the spellings is training's SpelledWords
            spelled = SpelledWords.from_padded(char_ids, tokens != 0)
            words = [[[c for c in word if c] for word in row[:n]]
                     for row, n in zip(char_ids.tolist(), lengths.tolist())]
            feed["spellings"], feed["spelling_index"] = map(
                torch.from_numpy, bundle.distinct_spellings(words, tokens.size(1)))
            assert len(feed["spellings"]) == len(spelled.spellings)
        got = run_onnx(tmp_path / "model.onnx", feed)[0]
        with torch.no_grad():  # the network as training runs it: SpelledWords from the collate
            logits = net(tokens, lengths, spelled)
        if kind == "classification":
            expected = logits.softmax(-1).numpy()
            np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
            assert (got.argmax(1) == expected.argmax(1)).all()
        else:
            real = (torch.arange(tokens.size(1)) < lengths.unsqueeze(1)).numpy()
            np.testing.assert_allclose(got[real], logits.numpy()[real], atol=TOLERANCE, rtol=0)
            assert (got.argmax(2)[real] == logits.numpy().argmax(2)[real]).all()


def test_pretrained_vectors_export(tmp_path):
    """Pretrained vectors (frozen where the file had the word) and words added from the
    vectors file beyond the trained rows: the lookup exports as the network computes it."""
    torch.manual_seed(0)
    embeddings = WordEmbeddings(60, 8, trained_vocab_size=40, pretrained=True, freeze=True)
    embeddings.pretrained.normal_()
    embeddings.found.copy_(torch.rand(60) < 0.5)
    net = SentenceClassifierNet(embeddings, {"hidden_size": 6, "cell": "gru"}, 2).eval()
    write_graph(task_spec(types.SimpleNamespace(task="classification", net=net, vocabs={})),
                tmp_path / "model.onnx")
    tokens, lengths, _ = word_batch([5, 1, 3], vocab=60, seed=2)
    assert (tokens >= 40).any()  # words with a pretrained vector only
    got = run_onnx(tmp_path / "model.onnx", {"tokens": tokens, "lengths": lengths})[0]
    with torch.no_grad():
        expected = net(tokens, lengths).softmax(-1).numpy()
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mingru", "minlstm"])
def test_exported_char_lm_steps_like_the_network(tmp_path, cell):
    """The prompt at once, then steps of one character, the state fed back: the network's
    logits over the whole text (state carried the same way), for two rows."""
    torch.manual_seed(0)
    net = CharLMNet(len(CHARS), {"hidden_size": 6, "cell": cell, "num_layers": 2},
                    embedding_dim=5).eval()
    spec = task_spec(types.SimpleNamespace(task="language_model", net=net, vocabs={}))
    write_graph(spec, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    text = torch.randint(0, len(CHARS), (2, 7))
    state = {f"{name}0": np.zeros((2, 2, 6), np.float32) for name in spec["state"]["names"]}
    pieces = []
    for start, end in ((0, 4), (4, 5), (5, 6), (6, 7)):
        logits, *new = session.run(None, {"tokens": text[:, start:end].numpy(), **state})
        pieces.append(logits)
        state = dict(zip(state, new))
    with torch.no_grad():
        expected = net(text)[0].numpy()
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "minlstm"])
def test_exported_char_lm_writes_the_checkpoints_greedy_text(tmp_path, cell):
    torch.manual_seed(0)
    model = CharLanguageModel(len(CHARS), {"hidden_size": 16, "cell": cell, "num_layers": 2},
                              embedding_dim=8).eval()
    model.vocabs = {"chars": CHARS}
    export_model(model, tmp_path / "lm", source="test")
    cfg = compose_config(tmp_path, [f"ckpt_path={tmp_path / 'lm'}", "prompt=abc",
                                    "num_chars=40", "temperature=0"], config_name="generate")
    out = io.StringIO()
    written = commands.generate(cfg, out)
    assert written == model.generate("abc", 40, temperature=0)
    assert out.getvalue() == "abc" + written + "\n"
    sampled = [commands.generate(cfg, io.StringIO()) for cfg.temperature, cfg.seed in
               ((0.8, 3), (0.8, 3))]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 40  # a seed repeats the text


# -- through the commands -----------------------------------------------------------------------
QUIET = ["logger=csv", "callbacks=model_checkpoint", "test=false", "trainer.max_epochs=2",
         "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]
TAGGED = [("The dog sees a cat", "DET NOUN VERB DET NOUN"),
          ("a big Bird runs", "DET ADJ NOUN VERB"), ("the old tree", "DET ADJ NOUN"),
          ("A red cat likes the dog", "DET ADJ NOUN VERB DET NOUN")]
REVIEWS = ["1 The film is Good", "0 a BAD , dull film", "0 Not good at all", "1 good",
           "0 bad bad", "1 the acting is good", "0 Dull", "1 not Dull"]


def conllu_lines(sentences):
    lines = []
    for words, tags in sentences:
        lines += ["\t".join([str(i), w, "_", t, "_", "_", "0", "dep", "_", "_"])
                  for i, (w, t) in enumerate(zip(words.split(), tags.split()), start=1)]
        lines.append("")
    return lines


@pytest.fixture(scope="module")
def tagger_ckpt(tmp_path_factory) -> Path:
    """A tiny tagger with character features (words clipped to 3 characters), trained with
    seqmodels-train from a directory outside the repository."""
    root = tmp_path_factory.mktemp("tagger")
    train_path = write_lines(root / "train.conllu", conllu_lines(TAGGED) * 4)
    done = command("seqmodels-train", "data=conllu", f"data.train_path={train_path}",
                   f"data.val_path={train_path}", "data.max_word_length=3", "data.batch_size=4",
                   "model=tagger", "model.embedding_dim=8", "model.encoder.hidden_size=8",
                   "model.chars.embedding_dim=4", "model.chars.hidden_size=4", *QUIET, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    (best,) = root.glob("logs/train/runs/*/checkpoints/epoch_*.ckpt")
    return best


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classifier")
    train_path = write_lines(root / "train.txt", REVIEWS * 3)
    cfg = compose_config(root, [
        "data=text_classification", f"data.train_path={train_path}",
        f"data.val_path={train_path}", "data.lowercase=true", "data.batch_size=4",
        "model.embedding_dim=8", "model.encoder.hidden_size=8", "model.pooling=mean", *QUIET])
    _, objects = train(cfg)
    return Path(objects["trainer"].checkpoint_callback.best_model_path)


def command(name: str, *args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_tagger_export_predicts_like_the_checkpoint_without_torch(tmp_path, tagger_ckpt):
    """From a directory outside the repo: export, then predict from the export and from the
    checkpoint; the same lines (tokens and tags), and the export's run imports no torch or
    Lightning (Python's import log of the very command a user types)."""
    sentences = ["The dog runs", "a", "Zebras see the big old tree", "red Bird"]
    source = write_lines(tmp_path / "in.txt", sentences)
    done = command("seqmodels-export", f"ckpt_path={tagger_ckpt}", "output=exported",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exported tagging model to exported" in done.stdout
    exported = tmp_path / "exported"
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "export.json",
                                                          "model.onnx", "vocabs.json"]
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["text_settings"]["max_word_length"] == 3
    assert "`spelling_index`" in (exported / "README.md").read_text()

    from_export = command("seqmodels-predict", "ckpt_path=exported", f"input={source}",
                          "batch_size=2", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert from_export.returncode == 0, from_export.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in from_export.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and not imported & {"torch", "lightning"}
    from_checkpoint = command("seqmodels-predict", f"ckpt_path={tagger_ckpt}",
                              f"input={source}", cwd=tmp_path)
    assert from_checkpoint.returncode == 0, from_checkpoint.stderr
    assert from_export.stdout.splitlines() == from_checkpoint.stdout.splitlines()
    assert len(from_export.stdout.split("\n\n")) == len(sentences) + 1


def test_classifier_export_predicts_like_the_checkpoint(tmp_path, classifier_ckpt):
    """Probabilities within 1e-4 (printed to 4 decimals) and the same labels, line by line,
    both output formats; the int8 export's largest difference is recorded."""
    model = load_model(classifier_ckpt).eval()
    export_model(model, tmp_path / "float", source=str(classifier_ckpt))
    export_model(model, tmp_path / "int8", quantize="int8", source=str(classifier_ckpt))
    source = write_lines(tmp_path / "in.txt", ["a GOOD film", "dull", "", "not bad at all",
                                               "the plot , the acting"])
    for fmt in ("tsv", "jsonl"):
        def run(ckpt, predict, fmt=fmt):
            out = io.StringIO()
            predict(compose_config(tmp_path, [f"ckpt_path={ckpt}", f"input={source}",
                                              f"format={fmt}"], config_name="predict"), out)
            return out.getvalue().splitlines()

        # seqmodels.cli.predict's predict() hands an exported directory to onnxruntime
        ours = run(tmp_path / "float", predict_checkpoint)
        theirs = run(classifier_ckpt, predict_checkpoint)
        assert len(ours) == len(theirs) == (5 if fmt == "tsv" else 4)
        for mine, reference in zip(ours, theirs):
            if fmt == "tsv":
                mine, reference = mine.split("\t"), reference.split("\t")
                assert mine[:3] == reference[:3]
                if mine[0] != "line":
                    np.testing.assert_allclose([float(p) for p in mine[3:]],
                                               [float(p) for p in reference[3:]], atol=2e-4)
            else:
                mine, reference = json.loads(mine), json.loads(reference)
                assert mine["label"] == reference["label"] and mine["line"] == reference["line"]
                for label, p in reference["probs"].items():
                    assert mine["probs"][label] == pytest.approx(p, abs=2e-4)
    manifest = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert manifest["quantize"] == "int8" and manifest["int8_difference"] < 0.1
    assert (tmp_path / "int8" / "model.onnx").stat().st_size > 0


# -- refusals -----------------------------------------------------------------------------------
def export_cfg(tmp_path, ckpt, *options):
    return compose_config(tmp_path, [f"ckpt_path={ckpt}", *options], config_name="export")


def test_bad_input_is_refused_in_one_line_and_leaves_nothing(tmp_path, classifier_ckpt):
    (tmp_path / "taken").mkdir()
    cases = [(("format=tflite",), "format='tflite' is not one of"),
             (("quantize=int4",), "quantize='int4' is not one of"),
             ((f"output={tmp_path / 'taken'}",), "exists; name a new directory"),
             ((f"output={tmp_path / 'old'}", "opset=7"), "opset=7"),
             ((f"output={tmp_path / 'no' / 'parent'}",), "parent directory does not exist")]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message) as refused:
            export(export_cfg(tmp_path, classifier_ckpt, *options))
        assert "\n" not in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial directory
    assert not any((tmp_path / "taken").iterdir())
    with pytest.raises(ConfigError, match="cannot be exported"):
        task_spec(types.SimpleNamespace(task="summarization", net=None, vocabs={}))
    with pytest.raises(ConfigError, match="language_model model"):
        export_model(load_model(classifier_ckpt), tmp_path / "c", source="x")
        commands.generate(compose_config(tmp_path, [f"ckpt_path={tmp_path / 'c'}"],
                                         config_name="generate"))


def test_the_torch_free_pieces_match_training(tmp_path):
    """The runner's word clipping and input readers are the training code's."""
    for word in ("a", "abcdef", "https://example.org/a/long/path", "überlang"):
        for limit in (1, 3, 4, 30):
            assert bundle.clip_word(word, limit) == clip_word(word, limit)
    conllu = ["# text", "1-2\tdont\t_\t_\t_\t_\t_\t_\t_\t_", *conllu_lines(TAGGED[:2])]
    samples = {"conllu": conllu, "column": ["-DOCSTART- O", "", "A x", "b y", "", "c z"],
               "csv": ["text,label", '"a, b",1', "c d,0"], "jsonl": ['{"text": "a b"}'],
               "text": ["a b", "", "c"]}
    assert commands.read_sentences is checkpoint_reader  # one reader for both commands
    expected = {"column": [(["A", "b"], 3), (["c"], 6)], "csv": [(["a,", "b"], 2), (["c", "d"], 3)],
                "jsonl": [(["a", "b"], 1)], "text": [(["a", "b"], 1), (["c"], 3)]}
    for input_format, lines in samples.items():
        numbered = list(enumerate(lines, start=1))
        read = list(commands.read_sentences(numbered, input_format, "x"))
        if input_format in expected:
            assert read == expected[input_format], input_format
        else:  # CoNLL-U: the comment and the multiword range are no words
            assert [words for words, _ in read] == [w.split() for w, _ in TAGGED[:2]]
