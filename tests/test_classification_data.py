"""Readers, vocabulary and datamodule for sentence classification, on files the tests write."""

import logging
import random

import pytest
import torch

from seqmodels.data.batching import LengthBatchSampler, collate_classification, pad
from seqmodels.data.classification import TEST_SPLIT_SEED, TextClassificationDataModule
from seqmodels.data.download import ensure_dataset
from seqmodels.data.labelled_text import read_label_text, read_tsv
from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.errors import ConfigError, DataError
from tests.conftest import write_lines


def test_vocab_specials_frequency_order_and_round_trip():
    vocab = Vocab.build([["b", "a", "b"], ["c", "b", "a"]], min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "b", "a"]
    assert vocab.encode(["a", "zzz", "b"]) == [3, UNK_ID, 2]
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    labels = Vocab(["neg", "pos"], has_specials=False)
    with pytest.raises(KeyError):
        labels.encode(["neutral"])


def test_label_text_reader_accepts_windows_line_endings_and_skips_blank_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"1 a good film\r\n\r\n0 a bad one\r\n")
    assert read_label_text(path) == [(["a", "good", "film"], "1", 1), (["a", "bad", "one"], "0", 3)]


@pytest.mark.parametrize("content,message,line", [
    ("1 fine\n0\n", "no text", 2),
    ("1 fine\n \n1 ok\n0\n", "no text", 4),
])
def test_label_text_reader_names_file_and_line(tmp_path, content, message, line):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_label_text(path)
    assert f"{path}:{line}:" in str(error.value)


def test_tsv_reader_with_header_and_errors(tmp_path):
    path = write_lines(tmp_path / "a.tsv", ["text\tlabel", "great fun\tpos", "dull\tneg"])
    assert read_tsv(path) == [(["great", "fun"], "pos", 2), (["dull"], "neg", 3)]
    bad = write_lines(tmp_path / "b.tsv", ["great fun\tpos", "no tab here"])
    with pytest.raises(DataError, match=r"b.tsv:2: line has no tab"):
        read_tsv(bad)
    empty_label = write_lines(tmp_path / "c.tsv", ["great fun\t"])
    with pytest.raises(DataError, match=r"c.tsv:1: line has no label"):
        read_tsv(empty_label)


def test_missing_empty_and_non_utf8_files_are_named(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_label_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt: data file is empty"):
        read_label_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"1 fine\n0 caf\xe9 bad\n")
    with pytest.raises(DataError, match=r"latin1.txt:2: invalid UTF-8 at byte offset 12 "
                       r"\(byte 0xe9\); if the file is in another encoding, name it: "
                       r"data.encoding=latin-1"):
        read_label_text(tmp_path / "latin1.txt")
    assert read_label_text(tmp_path / "latin1.txt", errors="replace")[1][0] == ["caf\ufffd", "bad"]


def _datamodule(tmp_path, **kwargs):
    train = write_lines(tmp_path / "train.txt",
                        ["1 good fun film", "0 bad dull film", "1 good good", "0 bad"] * 5)
    test = write_lines(tmp_path / "test.txt", ["1 good unseenword", "0 bad"])
    options = {"train_path": str(train), "test_path": str(test), "batch_size": 3, **kwargs}
    return TextClassificationDataModule(**options)


def test_datamodule_carves_validation_from_train_when_none_is_given(tmp_path):
    dm = _datamodule(tmp_path, val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 15 and len(dm.splits["val"]) == 5
    assert dm.model_sizes() == {"vocab_size": 2 + 5, "trained_vocab_size": 2 + 5, "num_classes": 2}
    dm.setup("test")
    assert dm.splits["test"].items[0] == ([dm.vocabs["tokens"].stoi["good"], UNK_ID], 1)


def test_unknown_label_at_test_time_is_refused_with_file_and_line(tmp_path):
    dm = _datamodule(tmp_path)
    write_lines(tmp_path / "test.txt", ["1 good", "2 strange"])
    dm.setup("fit")
    with pytest.raises(DataError, match=r"test.txt:2: label '2' is not in the label set"):
        dm.setup("test")


def test_empty_validation_split_is_refused(tmp_path):
    train = write_lines(tmp_path / "train.txt", ["1 good", "0 bad"])
    dm = TextClassificationDataModule(train_path=str(train), val_fraction=0.1)
    with pytest.raises(DataError, match="empty split"):
        dm.setup("fit")


def test_max_length_truncates_or_refuses(tmp_path):
    dm = _datamodule(tmp_path, max_length=2)
    dm.setup("fit")
    assert max(len(ids) for ids, _ in dm.splits["train"].items) == 2
    strict = _datamodule(tmp_path, max_length=2, on_long="error")
    with pytest.raises(DataError, match="longer than data.max_length=2"):
        strict.setup("fit")


def test_collate_pads_right_with_pad_id():
    batch = collate_classification([([5, 6, 7], 1), ([8], 0)])
    assert batch.tokens.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID]]
    assert batch.lengths.tolist() == [3, 1]
    assert batch.targets.tolist() == [1, 0]
    assert pad([[1], [2, 3]])[0].tolist() == [[1, 0], [2, 3]]


@pytest.mark.parametrize("bucketing", [False, True])
def test_sampler_covers_every_example_once_per_epoch(bucketing):
    lengths = [(i * 7) % 13 + 1 for i in range(103)]
    sampler = LengthBatchSampler(lengths, batch_size=8, bucketing=bucketing, seed=3)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 13
        assert sorted(i for b in batches for i in b) == list(range(103))
    if bucketing:  # batches hold similar lengths: less padding than random batches
        padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                      for b in batches)
        random = LengthBatchSampler(lengths, batch_size=8, bucketing=False, seed=3)
        random_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                             for b in random)
        assert padding < random_padding / 2


def test_sampler_shards_across_ranks(monkeypatch):
    lengths = list(range(1, 22))  # 21 examples, batches of 4: 6 batches
    shards = {}
    for rank in range(4):
        monkeypatch.setattr("seqmodels.data.batching.distributed_rank_and_size",
                            lambda rank=rank: (rank, 4))
        train = LengthBatchSampler(lengths, 4, shuffle=True, seed=1)
        evaluation = LengthBatchSampler(lengths, 4, shuffle=False, even_shards=False)
        shards[rank] = (list(train), list(evaluation))
        assert len(shards[rank][0]) == len(train) == 2  # every rank steps the same number of times
        assert len(shards[rank][1]) == len(evaluation)
    seen_train = [i for rank in shards for b in shards[rank][0] for i in b]
    assert set(seen_train) == set(range(21))
    seen_eval = sorted(i for rank in shards for b in shards[rank][1] for i in b)
    assert seen_eval == list(range(21))  # evaluation counts every example exactly once


def test_offline_download_names_the_missing_file_the_url_and_the_directory(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError) as error:
        ensure_dataset("sst2", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "sst2" / "stsa.binary.train") in message
    assert "https://" in message and "SEQMODELS_DATA_DIR" in message


def test_download_verifies_the_checksum(tmp_path, monkeypatch):
    import io

    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": "4"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: FakeResponse(b"junk"))
    with pytest.raises(DataError, match="checksum mismatch"):
        ensure_dataset("tinyshakespeare", tmp_path)
    assert not (tmp_path / "tinyshakespeare" / "input.txt").exists()
    assert list((tmp_path / "tinyshakespeare").iterdir()) == []


def test_files_already_present_are_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("no download"))
    write_lines(tmp_path / "tinyshakespeare" / "input.txt", ["hello"])
    assert ensure_dataset("tinyshakespeare", tmp_path) == tmp_path


def test_batch_leaves_lengths_on_the_cpu():
    batch = collate_classification([([5, 6], 1)])
    moved = batch.to(torch.device("meta"))
    assert moved.tokens.device.type == "meta" and moved.lengths.device.type == "cpu"


def test_char_features_spell_out_each_word_from_the_training_characters(tmp_path):
    train = write_lines(tmp_path / "train.txt", ["1 good fun", "0 dull plot"])
    test = write_lines(tmp_path / "test.txt", ["1 goodish xq fun"])
    dm = TextClassificationDataModule(train, val_path=train, test_path=test, batch_size=4,
                                      char_features=True, max_word_length=5)
    dm.setup("test")
    chars = dm.vocabs["chars"]
    assert set(chars.itos[2:]) == set("goodfunullpt")  # training characters only
    assert dm.model_sizes()["num_chars"] == len(chars)
    batch = next(iter(dm.test_dataloader()))
    assert batch.chars.padded().shape == (1, 3, 5)  # 3 words, clipped to 5 characters
    words = batch.chars.padded()[0].tolist()
    spelled = [[chars.itos[i] for i in word if i != PAD_ID] for word in words]
    # "goodish" keeps its first 3 and last 2 characters ("goosh"); s, h, x and q never occur
    # in training: <unk>.
    assert spelled == [[*"goo", "<unk>", "<unk>"], ["<unk>", "<unk>"], list("fun")]
    assert batch.tokens[0, 1] == UNK_ID
    plain = TextClassificationDataModule(train, val_path=train, batch_size=4)
    plain.setup("fit")
    assert "chars" not in plain.vocabs and next(iter(plain.train_dataloader())).chars is None


# -- encodings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding,text", [
    ("latin-1", "1 un café crème\n0 très naïf\n"),
    ("cp1252", "1 un café à 5 €\n0 “très” naïf\n"),
    ("utf-16", "1 un café crème\n0 日本 naïf\n"),  # two bytes a newline, and a byte-order mark
    ("utf-8-sig", "1 un café crème\n0 très naïf\n"),  # the mark is not part of the first label
])
def test_label_text_reader_decodes_the_configured_encoding(tmp_path, encoding, text):
    path = tmp_path / "train.txt"
    path.write_bytes(text.encode(encoding))
    first, second = (line.split(" ", 1) for line in text.splitlines())
    assert read_label_text(path, encoding=encoding) == [
        (first[1].split(), first[0], 1), (second[1].split(), second[0], 2)]
    if encoding != "utf-8-sig":  # the others are not valid UTF-8: an error, not mangled words
        with pytest.raises(DataError, match="data.encoding="):
            read_label_text(path)


def test_tsv_reader_and_datamodule_decode_latin1(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("text\tsentiment\nun café\tpos\nsoirée ratée\tneg\n".encode("latin-1"))
    assert read_tsv(path, encoding="latin-1") == [
        (["un", "café"], "pos", 2), (["soirée", "ratée"], "neg", 3)]
    dm = TextClassificationDataModule(str(path), val_path=str(path), format="tsv",
                                      encoding="latin-1")
    dm.setup("fit")
    assert sorted(dm.vocabs["tokens"].itos[2:]) == ["café", "ratée", "soirée", "un"]
    assert dm.text_settings() == {"encoding": "latin-1", "lowercase": False}


def test_a_utf16_error_names_its_line_and_byte_across_line_chunks(tmp_path):
    path = tmp_path / "train.txt"
    # A lone surrogate (d800) starts line 2: after the 2-byte BOM and 5 two-byte characters.
    path.write_bytes("1 ok\n".encode("utf-16") + b"\x00\xd8" + " x\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"train.txt:2: invalid utf-16 at byte offset 12 "):
        read_label_text(path, encoding="utf-16")


@pytest.mark.parametrize("encoding", ["latin-2x", "base64"])  # unknown; not a text codec
def test_an_unknown_encoding_is_refused_before_reading(tmp_path, encoding):
    with pytest.raises(ConfigError, match=rf"^data.encoding='{encoding}' is not a Python text "
                                          "encoding; give one such as utf-8, latin-1"):
        TextClassificationDataModule(str(tmp_path / "never_read.txt"), encoding=encoding)


# -- TSV columns and headers --------------------------------------------------------------------
def test_tsv_header_with_a_usual_label_name_is_not_a_class(tmp_path):
    # The reported case: `text<TAB>sentiment` became a third class 'sentiment'.
    path = write_lines(tmp_path / "a.tsv", ["text\tsentiment", "great fun\tpos", "dull\tneg"])
    assert read_tsv(path) == [(["great", "fun"], "pos", 2), (["dull"], "neg", 3)]
    assert read_tsv(path, label_column="sentiment") == read_tsv(path)
    only_label = write_lines(tmp_path / "b.tsv", ["review_text\tSentiment", "dull\tneg"])
    assert read_tsv(only_label) == [(["dull"], "neg", 2)]


def test_tsv_header_names_choose_the_columns_in_any_order(tmp_path):
    path = write_lines(tmp_path / "a.tsv", ["label\tid\tsentence", "pos\t7\tgreat fun",
                                            "neg\t8\tdull"])
    assert read_tsv(path) == [(["great", "fun"], "pos", 2), (["dull"], "neg", 3)]
    named = write_lines(tmp_path / "b.tsv", ["id\tReview\tstars", "1\tgreat fun\t5",
                                             "2\tdull\t1"])
    assert read_tsv(named, text_column="review", label_column="stars") == [
        (["great", "fun"], "5", 2), (["dull"], "1", 3)]
    # A header's id column is not text: with no usual text name, which column is asked.
    unnamed = write_lines(tmp_path / "c.tsv", ["id\ttweet_text\tlabel", "1\tgreat fun\tpos"])
    with pytest.raises(DataError, match=r"c.tsv:1: which column of the header line \['id', "
                                        r"'tweet_text', 'label'\] is the text\? name it"):
        read_tsv(unnamed)
    assert read_tsv(unnamed, text_column="tweet_text") == [(["great", "fun"], "pos", 2)]


def test_tsv_columns_by_index_with_and_without_a_header(tmp_path):
    plain = write_lines(tmp_path / "a.tsv", ["pos\tgreat fun\t7", "neg\tdull\t8"])
    assert read_tsv(plain, text_column=1, label_column=0) == [
        (["great", "fun"], "pos", 1), (["dull"], "neg", 2)]
    assert read_tsv(plain, text_column=-2, label_column=0) == read_tsv(plain, text_column=1,
                                                                       label_column=0)
    with_header = write_lines(tmp_path / "b.tsv", ["label\ttext\tid", "pos\tgreat fun\t7"])
    assert read_tsv(with_header, text_column=1, label_column=0) == [(["great", "fun"], "pos", 2)]
    with pytest.raises(DataError, match=r"a.tsv:1: data.label_column=3 is out of range: the "
                                        "line has 3 tab-separated fields"):
        read_tsv(plain, text_column=1, label_column=3)


def test_tsv_without_header_keeps_tabs_in_the_text_and_the_label_last(tmp_path):
    path = write_lines(tmp_path / "a.tsv", ["great\tfun film\tpos", "so\tdull\tneg"])
    assert read_tsv(path) == [(["great", "fun", "film"], "pos", 1), (["so", "dull"], "neg", 2)]


def test_a_column_name_missing_from_the_header_lists_the_header(tmp_path):
    path = write_lines(tmp_path / "a.tsv", ["text\tsentiment", "great fun\tpos"])
    with pytest.raises(DataError) as error:
        read_tsv(path, label_column="polarity")
    assert str(error.value) == (
        f"{path}:1: data.label_column='polarity' is not a column of the header line "
        "['text', 'sentiment']; name one of these or give a 0-based column index")
    no_header = write_lines(tmp_path / "b.tsv", ["great fun\tpos"])
    with pytest.raises(DataError, match=r"data.text_column='text' is not a column of the header "
                                        r"line \['great fun', 'pos'\]"):
        read_tsv(no_header, text_column="text")
    with pytest.raises(DataError, match="set data.format=tsv"):
        TextClassificationDataModule(str(path), label_column="sentiment")


def test_a_label_met_once_in_training_is_named_with_its_line(tmp_path, caplog):
    # A header of unusual names is not recognised: its label is a class of one example.
    path = write_lines(tmp_path / "a.tsv", ["tweet_text\tairline_sentiment", "great\tpos",
                                            "dull\tneg", "fun\tpos", "bad\tneg", "ok\tneutrl"])
    dm = TextClassificationDataModule(str(path), val_path=str(path), format="tsv")
    with caplog.at_level(logging.WARNING, logger="seqmodels.data.classification"):
        dm.setup("fit")
    warnings = [r.getMessage() for r in caplog.records if "only once" in r.getMessage()]
    assert [w.split(" occurs")[0] for w in warnings] == [
        f"{path}:1: label 'airline_sentiment'", f"{path}:6: label 'neutrl'"]
    caplog.clear()
    named = TextClassificationDataModule(str(path), val_path=str(path), format="tsv",
                                         label_column="airline_sentiment")
    with caplog.at_level(logging.WARNING, logger="seqmodels.data.classification"):
        named.setup("fit")
    assert [r.getMessage().split(" occurs")[0] for r in caplog.records
            if "only once" in r.getMessage()] == [f"{path}:6: label 'neutrl'"]
    assert named.vocabs["labels"].itos == ["neg", "neutrl", "pos"]


# -- a test split carved out of train -----------------------------------------------------------
def _numbered(tmp_path, n=100):
    """Example i holds the word w<i> (its line number): a split's lines say where it came from."""
    return write_lines(tmp_path / "train.txt", [f"{i % 2} w{i}" for i in range(1, n + 1)])


def _lines(dm, split):
    return [int(tokens[0][1:]) for tokens, _, _ in dm.read_split(split)]


def test_test_fraction_carves_a_fixed_test_split_disjoint_from_val_and_train(tmp_path, caplog):
    path = _numbered(tmp_path)
    dm = TextClassificationDataModule(str(path), val_fraction=0.1, test_fraction=0.2, seed=7)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "no test split" not in caplog.text
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [70, 10, 20]
    train, val, test = (_lines(dm, s) for s in ("train", "val", "test"))
    assert sorted(train + val + test) == list(range(1, 101))  # each example in one split only
    order = list(range(100))
    random.Random(TEST_SPLIT_SEED).shuffle(order)
    assert test == sorted(i + 1 for i in order[:20])
    assert dm.paths["test"] == str(path)  # train.py tests when a test split exists

    # The run's seed moves validation, never the test split; eval rebuilds the same one.
    other = TextClassificationDataModule(str(path), val_fraction=0.1, test_fraction=0.2,
                                         seed=8)
    assert _lines(other, "test") == test and _lines(other, "val") != val
    evaluation = TextClassificationDataModule(str(path), val_fraction=0.1, test_fraction=0.2,
                                              seed=7)
    evaluation.set_vocabs(dm.vocabs)
    evaluation.setup("test")
    assert evaluation.splits["test"].items == dm.splits["test"].items


def test_test_fraction_with_a_validation_file_and_without_one(tmp_path):
    path = _numbered(tmp_path)
    val = write_lines(tmp_path / "val.txt", ["1 w1000", "0 w1001"])
    dm = TextClassificationDataModule(str(path), val_path=str(val), test_fraction=0.25)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [75, 2, 25]
    assert sorted(_lines(dm, "train") + _lines(dm, "test")) == list(range(1, 101))
    # With no test split, validation is carved exactly as before test_fraction existed.
    plain = TextClassificationDataModule(str(path), val_fraction=0.1, seed=7)
    order = list(range(100))
    random.Random(7).shuffle(order)
    assert _lines(plain, "val") == sorted(i + 1 for i in order[:10])


def test_test_fraction_refusals(tmp_path):
    path = _numbered(tmp_path, n=4)
    with pytest.raises(DataError, match="test_path=.* is given too"):
        TextClassificationDataModule(str(path), test_path=str(path), test_fraction=0.1)
    with pytest.raises(DataError, match="leave training examples"):
        TextClassificationDataModule(str(path), val_fraction=0.5, test_fraction=0.5)
    dm = TextClassificationDataModule(str(path), val_fraction=0.5, test_fraction=0.1)
    with pytest.raises(DataError, match=r"data.test_fraction=0.1 of 4 training examples leaves "
                                        "an empty split"):
        dm.setup("fit")


def test_no_test_split_is_said_in_the_log(tmp_path, caplog):
    dm = TextClassificationDataModule(str(_numbered(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="seqmodels.data.base"):
        dm.setup("fit")
        dm.setup("fit")  # said once, not at every setup
    said = [r.getMessage() for r in caplog.records if "no test split" in r.getMessage()]
    assert len(said) == 1 and "data.test_fraction=0.1" in said[0]
    assert dm.paths["test"] is None
