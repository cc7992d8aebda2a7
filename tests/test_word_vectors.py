"""Pretrained word vectors for every word-level task (issue 17): GloVe / word2vec files, plain
and gzipped, read in one pass and cached; one-line errors for bad lines and dimensions; the
vocabulary extended with the file's words, so that unseen words keep their vectors; frozen rows
that stay frozen; and checkpoints that predict without the file."""

import gzip
import json
import logging

import pytest
import torch

from seqmodels.cli.eval import load_model
from seqmodels.data.chars import Speller, spell_batch
from seqmodels.data.vocab import UNK_ID, Vocab
from seqmodels.data.word_vectors import check_vectors_file, load_word_vectors
from seqmodels.errors import ConfigError, DataError
from seqmodels.models.embeddings import WordEmbeddings
from tests.conftest import run_cli, write_lines
from tests.tiny_datasets import UNSEEN_WITH_VECTORS, write_glove

GLOVE = "the 1 2 3\nparis 4 5 6\ndog 7 8 9\ncat 0 0 1\nzebra 1 0 0\n"
WORDS = ["the", "paris", "dog", "cat", "zebra"]


def test_glove_word2vec_and_gzipped_files_read_alike(tmp_path):
    plain = tmp_path / "glove.txt"
    plain.write_text(GLOVE)
    word2vec = tmp_path / "vectors.w2v.txt"
    word2vec.write_text("5 3\n" + GLOVE)
    gzipped = tmp_path / "glove.txt.gz"
    gzipped.write_bytes(gzip.compress(GLOVE.encode()))
    for path in (plain, word2vec, gzipped):
        vectors = load_word_vectors(path)
        assert vectors.words == WORDS
        assert vectors.vectors.dtype == torch.float32
        assert vectors.vectors[1].tolist() == [4, 5, 6]
        assert vectors.vectors[4].tolist() == [1, 0, 0]


def test_a_word_with_spaces_keeps_them(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 1 2\nat & t 3 4\n")
    vectors = load_word_vectors(path)
    assert vectors.words == ["the", "at & t"]
    assert vectors.vectors[1].tolist() == [3, 4]


def test_the_cache_gives_the_same_vectors_and_follows_the_file(tmp_path, caplog):
    path = tmp_path / "glove.txt.gz"
    path.write_bytes(gzip.compress(GLOVE.encode()))
    cache = tmp_path / "cache"
    first = load_word_vectors(path, cache)
    (cached,) = cache.iterdir()
    with caplog.at_level(logging.INFO):
        second = load_word_vectors(path, cache)
    assert "from the cache" in caplog.text
    assert second.words == first.words and torch.equal(second.vectors, first.vectors)

    # Another file at the same path is read again, never served from the old cache.
    path.write_bytes(gzip.compress(GLOVE.replace("dog 7 8 9", "dog 9 9 9").encode()))
    assert load_word_vectors(path, cache).vectors[2].tolist() == [9, 9, 9]

    # A damaged cache is rebuilt.
    for entry in cache.iterdir():
        entry.write_bytes(b"not a torch file")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_word_vectors(path, cache).vectors[2].tolist() == [9, 9, 9]
    assert "ignoring the unreadable cache" in caplog.text
    assert cached.name.startswith("glove.txt.gz.")


@pytest.mark.parametrize("text, message", [
    ("the 1 2 3\nparis 4 5\n", ":2: expected a word and 3 numbers, found 2 values"),
    ("the 1 2 3\nparis 4 x 6\n", ":2: 'x' in the vector of 'paris' is not a number"),
    ("the 1 2 3\nparis 4 nan 6\n", ":2: the vector of 'paris' is not finite"),
    ("paris 1 2 3\nthe 1 2 3\nparis 4 x 6\n", ":3: 'x' in the vector of 'paris'"),  # twice
    ("2 3\nthe 1 2 3\nparis\n", ":3: a vectors line is 'word v1 v2 ...'|:3: expected a word"),
])
def test_a_malformed_line_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "glove.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        load_word_vectors(path)
    assert str(error.value).startswith(str(path))
    assert "\n" not in str(error.value)


def test_a_wrong_dimension_or_a_missing_file_says_what_to_set(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    check_vectors_file(path, 3)
    with pytest.raises(ConfigError, match="has 3-dimensional vectors but model.embedding_dim=50; "
                                          "set model.embedding_dim=3"):
        check_vectors_file(path, 50)
    word2vec = tmp_path / "w2v.txt"
    word2vec.write_text("5 3\n" + GLOVE)
    with pytest.raises(ConfigError, match="set model.embedding_dim=3"):
        check_vectors_file(word2vec, 4)
    with pytest.raises(ConfigError, match="model.embeddings.path='.*nothing.txt': no such file"):
        check_vectors_file(tmp_path / "nothing.txt", 3)


def test_a_word_is_looked_up_as_written_then_lower_cased(tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("3 3\nParis 1 1 1\nparis 4 5 6\ndog 7 8 9\n")
    vocab = Vocab(["<pad>", "<unk>", "Paris", "Dog", "emu"])
    table, found = load_word_vectors(path).for_vocab(vocab)
    assert found.tolist() == [False, False, True, True, False]
    assert table[2].tolist() == [1, 1, 1]  # its own casing wins over "paris"
    assert table[3].tolist() == [7, 8, 9]  # "Dog" falls back to "dog"
    assert table[4].tolist() == [0, 0, 0]


def test_the_extended_vocabulary_keeps_unseen_words_that_the_vectors_know():
    trained = Vocab.build([["the", "Paris", "dog", "the"]])
    vocab = trained.extended(["the", "paris", "cat", "zebra"], limit=2)
    assert vocab.itos == trained.itos + ["paris", "cat"]  # "the" is there; 2 added, then none
    assert vocab.trained_size == len(trained) and vocab.is_extended
    ids = vocab.encode(["Paris", "paris", "Cat", "zebra", "DOG", "emu"])
    assert ids[0] == trained.stoi["Paris"]
    assert ids[1] == vocab.stoi["paris"] and ids[2] == vocab.stoi["cat"]  # lower-cased: added
    assert ids[3:] == [UNK_ID, UNK_ID, UNK_ID]  # past the limit; trained in another casing; none
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    assert "trained_size" not in trained.to_dict()  # an unextended vocabulary saves as before
    assert trained.encode(["paris", "zebra"]) == [UNK_ID, UNK_ID]


def extended_embeddings(tmp_path, freeze: bool):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    trained = Vocab.build([["the", "dog", "emu"]])  # "emu": not in the file
    vocab = trained.extended(load_word_vectors(path).words)  # + paris, cat, zebra
    embeddings = WordEmbeddings(len(vocab), 3, vocab.trained_size, pretrained=True,
                                freeze=freeze)
    embeddings.load_pretrained(load_word_vectors(path), vocab)
    return embeddings, vocab


def vectors_of(embeddings, vocab, words):
    tokens = torch.tensor([vocab.encode(words)])
    return embeddings(tokens, torch.ones_like(tokens, dtype=torch.bool))[0]


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "fine_tuned"])
def test_frozen_rows_stay_frozen_and_added_words_keep_their_vectors(tmp_path, freeze):
    embeddings, vocab = extended_embeddings(tmp_path, freeze)
    words = ["the", "dog", "paris", "zebra", "emu", "<unk>"]
    before = vectors_of(embeddings, vocab, words).detach()
    assert before[:4].tolist() == [[1, 2, 3], [7, 8, 9], [4, 5, 6], [1, 0, 0]]  # the file's
    optimizer = torch.optim.Adam(embeddings.parameters(), lr=0.1)
    for _ in range(5):  # pull every vector toward 0 (the added words have no trained row)
        optimizer.zero_grad()
        vectors_of(embeddings, vocab, ["the", "dog", "emu", "<unk>"]).pow(2).sum().backward()
        optimizer.step()
    after = vectors_of(embeddings, vocab, words).detach()
    moved = (after != before).any(dim=1).tolist()
    #        the   dog   paris  zebra  emu   <unk>
    assert moved == [not freeze, not freeze, False, False, True, True]
    assert after[2:4].tolist() == [[4, 5, 6], [1, 0, 0]]  # unseen in training: still the file's


def test_embeddings_without_vectors_are_one_trained_table():
    embeddings = WordEmbeddings(6, 4)
    assert embeddings.pretrained is None and list(embeddings.state_dict()) == ["trained.weight"]
    with pytest.raises(ConfigError, match="freeze=true needs model.embeddings.path"):
        WordEmbeddings(6, 4, freeze=True)
    with pytest.raises(ConfigError, match="needs the pretrained table"):
        WordEmbeddings(6, 4, trained_vocab_size=4)


# -- the commands a user types ------------------------------------------------------------------
def ok(result):
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.mark.parametrize("experiment, sentence", [
    ("sst2_bilstm", "a superb , dreadful cat"),
    ("ewt_upos", "the cat runs ."),
], ids=["sentiment", "tagger"])
def test_trained_with_vectors_a_checkpoint_predicts_unseen_words_without_the_file(
        user, tmp_path, experiment, sentence):
    cwd, env = user
    env = {**env, "SEQMODELS_CACHE_DIR": str(tmp_path / "cache")}
    vectors = write_glove(tmp_path / "vectors" / "tiny.txt.gz", 8, seed=3)
    run = cwd / "run"
    ok(run_cli("seqmodels.cli.train", f"experiment={experiment}", "debug=limit", "logger=csv",
               f"model.embeddings.path={vectors}", "model.embedding_dim=8",
               "model.encoder.hidden_size=8", f"hydra.run.dir={run}", cwd=cwd, env=env))
    reported = json.loads((run / "metrics.json").read_text())
    (best,) = [p for p in (run / "checkpoints").glob("epoch_*.ckpt")]

    in_file = load_word_vectors(vectors)
    file_vectors = dict(zip(in_file.words, in_file.vectors.tolist()))
    # Another machine: neither the file nor its cache.
    vectors.unlink()
    for entry in (tmp_path / "cache").rglob("*.pt"):
        entry.unlink()
    evaluated = cwd / "eval"
    ok(run_cli("seqmodels.cli.eval", f"ckpt_path={best}", f"hydra.run.dir={evaluated}",
               cwd=cwd, env=env))
    assert json.loads((evaluated / "metrics.json").read_text())["test/acc"] == reported["test/acc"]
    write_lines(cwd / "new.txt", [sentence])
    printed = ok(run_cli("seqmodels.cli.predict", f"ckpt_path={best}", "input=new.txt",
                         "format=jsonl", cwd=cwd, env=env)).stdout
    predicted = json.loads(printed.splitlines()[0])

    # What predict printed is the model reading the unseen words' own pretrained vectors.
    model = load_model(best).eval()
    vocab = model.vocabs["tokens"]
    ids = vocab.encode(sentence.split())
    unseen = [w for w in sentence.split() if w in UNSEEN_WITH_VECTORS]
    assert unseen and all(vocab.stoi[w] >= vocab.trained_size for w in unseen)
    tokens = torch.tensor([ids])
    mask = torch.ones_like(tokens, dtype=torch.bool)
    chars = None
    if model.embeddings.chars is not None:
        spelled = Speller(model.vocabs["chars"], 30)(sentence.split())
        chars = spell_batch([spelled], len(ids))
    with torch.no_grad():
        read = model.embeddings(tokens, mask, chars)[0, :, :8]
        for position, word in enumerate(sentence.split()):
            if word in unseen:
                assert read[position].tolist() == pytest.approx(file_vectors[word], abs=1e-6)
        logits = model(tokens, torch.tensor([len(ids)]), chars)
        as_unk = model(tokens.masked_fill(tokens >= vocab.trained_size, UNK_ID),
                       torch.tensor([len(ids)]), chars)
    assert not torch.allclose(logits, as_unk)  # the vectors, not <unk>, decided it
    if experiment == "sst2_bilstm":
        probabilities = logits.softmax(-1)[0].tolist()
        labels = model.vocabs["labels"].itos
        assert [predicted["probs"][label] for label in labels] == \
            pytest.approx(probabilities, abs=5e-5)  # predict prints 4 decimals
    else:
        tags = [model.tags[i] for i in logits.argmax(-1)[0].tolist()]
        assert predicted["tags"] == tags


def test_the_summary_shows_the_pretrained_table_and_its_coverage(tmp_path):
    from seqmodels.models.anatomy import describe
    from seqmodels.models.sentiment import SentimentClassifier

    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    vocab = Vocab.build([["the", "dog", "emu"]]).extended(load_word_vectors(path).words)
    model = SentimentClassifier(len(vocab), 2, {"hidden_size": 4}, embedding_dim=3,
                                trained_vocab_size=vocab.trained_size,
                                embeddings={"path": str(path), "freeze": True})
    model.embeddings.load_pretrained(load_word_vectors(path), vocab)
    blocks = describe(model)
    (table,) = [b for b in blocks if "pretrained word vectors" in b.title]
    assert "V=8 entries × D=3" in table.title  # <pad> <unk> the dog emu + paris cat zebra
    assert "P covers 2 of the 3 training words (66.7%) and 3 more words" in table.equations[1]
    assert "frozen" in table.equations[0] and table.count == 0  # a buffer, not a parameter
    assert sum(b.count for b in blocks) == sum(p.numel() for p in model.parameters())
