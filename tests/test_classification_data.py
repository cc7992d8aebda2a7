"""Readers, vocabulary and datamodule for sentence classification, on files the tests write."""

import pytest
import torch

from seqmodels.data.batching import LengthBatchSampler, collate_classification, pad
from seqmodels.data.classification import TextClassificationDataModule, read_label_text, read_tsv
from seqmodels.data.download import ensure_dataset
from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.errors import DataError
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
    with pytest.raises(DataError, match=r"latin1.txt:2: invalid UTF-8 at byte offset 12"):
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
    assert dm.model_sizes() == {"vocab_size": 2 + 5, "num_classes": 2}
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
    assert batch.chars.shape == (1, 3, 5)  # 3 words, clipped to 5 characters
    spelled = [[chars.itos[i] for i in word if i != PAD_ID] for word in batch.chars[0].tolist()]
    # "goodish" keeps its first 3 and last 2 characters ("goosh"); s, h, x and q never occur
    # in training: <unk>.
    assert spelled == [[*"goo", "<unk>", "<unk>"], ["<unk>", "<unk>"], list("fun")]
    assert batch.tokens[0, 1] == UNK_ID
    plain = TextClassificationDataModule(train, val_path=train, batch_size=4)
    plain.setup("fit")
    assert "chars" not in plain.vocabs and next(iter(plain.train_dataloader())).chars is None
