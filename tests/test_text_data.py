"""Plain-text data for the character LM: reading, the contiguous split, the train-only
vocabulary, and TBPTT batches whose rows continue from one batch to the next."""

import logging

import pytest
import torch

from seqmodels.data.text import CharTextDataModule, TrackBatches, read_text
from seqmodels.data.vocab import UNK_ID
from seqmodels.errors import ConfigError, DataError

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n") * 12


def write_text(path, text=TEXT):
    path.write_text(text, encoding="utf-8")
    return path


# -- batches over tracks (positions as ids, so that every check is about where a char came from)
def test_rows_continue_where_the_previous_batch_stopped():
    ids = torch.arange(103)  # position i holds "character" i
    batches = list(TrackBatches(ids, batch_size=4, bptt=7))
    length = 102 // 4  # 25 inputs per track: 3 full windows and one of 4
    assert len(batches) == 4 and [b.tokens.size(1) for b in batches] == [7, 7, 7, 4]
    assert batches[0].tokens[:, 0].tolist() == [0, length, 2 * length, 3 * length]
    for batch in batches:
        assert torch.equal(batch.targets, batch.tokens + 1)  # targets: one character later
        assert batch.lengths.tolist() == [batch.tokens.size(1)] * 4
    for previous, following in zip(batches, batches[1:]):
        assert torch.equal(following.tokens[:, 0], previous.tokens[:, -1] + 1)


def test_every_training_character_is_a_target_exactly_once_per_epoch():
    ids = torch.arange(103)
    batches = TrackBatches(ids, batch_size=4, bptt=7)
    for _ in range(2):  # a second epoch starts again from the tracks' beginnings
        targets = torch.cat([b.targets.flatten() for b in batches]).sort().values
        # Position 0 has nothing before it; the 102 - 4 * 25 = 2 left over at the end are unused.
        assert torch.equal(targets, torch.arange(1, 101))


def test_two_ranks_get_their_own_tracks_and_the_same_number_of_batches():
    ids = torch.arange(1001)
    ranks = [TrackBatches(ids, batch_size=3, bptt=16, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(list(ranks[1]))
    seen = torch.cat([b.targets.flatten() for rank in ranks for b in rank])
    assert len(seen) == len(set(seen.tolist())), "a character is a target on both ranks"
    assert torch.equal(seen.sort().values, torch.arange(1, 1 + 6 * (1000 // 6)))
    for rank in ranks:
        batches = list(rank)
        for previous, following in zip(batches, batches[1:]):
            assert torch.equal(following.tokens[:, 0], previous.tokens[:, -1] + 1)


def test_too_little_text_for_the_tracks_names_batch_size():
    with pytest.raises(DataError, match="batch_size=8"):
        TrackBatches(torch.arange(5), batch_size=8, bptt=4)


# -- the datamodule
def test_tracks_read_back_as_contiguous_text_of_the_train_part(tmp_path):
    dm = CharTextDataModule(str(write_text(tmp_path / "t.txt")), batch_size=3, bptt=10)
    dm.setup("fit")
    train_text = TEXT[: len(TEXT) - round(len(TEXT) * 0.1)]
    itos = dm.vocabs["chars"].itos
    batches = list(dm.train_dataloader())
    length = (len(train_text) - 1) // 3
    for row in range(3):
        track = "".join(itos[i] for b in batches for i in b.tokens[row].tolist())
        assert track == train_text[row * length : (row + 1) * length]
    assert dm.model_sizes() == {"vocab_size": len(itos)}


def test_split_is_contiguous_and_vocabulary_comes_from_train_only(tmp_path):
    # "Z" appears only in the last 10%: the validation part.
    text = "abcab\n" * 30 + "xyZ\n"
    dm = CharTextDataModule(str(write_text(tmp_path / "t.txt", text)), batch_size=2, bptt=4)
    dm.setup("fit")
    vocab = dm.vocabs["chars"]
    assert "Z" not in vocab and set(vocab.itos[2:]) == set("abc\n")
    n_val = round(len(text) * 0.1)
    expected = [vocab.stoi.get(ch, UNK_ID) for ch in text[-n_val:]]
    assert dm.splits["val"].tolist() == expected
    assert len(dm.splits["train"]) == len(text) - n_val
    assert dm.paths["test"] is None and "test" not in dm.splits


def test_test_fraction_takes_the_end_of_the_text(tmp_path):
    dm = CharTextDataModule(str(write_text(tmp_path / "t.txt")), val_fraction=0.1,
                            test_fraction=0.05, batch_size=2, bptt=8)
    dm.setup()
    n = len(TEXT)
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [
        n - round(n * 0.1) - round(n * 0.05), round(n * 0.1), round(n * 0.05)]
    assert dm.paths["test"] is not None and len(dm.test_dataloader()) > 0


def test_a_folder_is_read_in_path_order_with_newlines_between_files(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_text(folder / "b.txt", "second\r\nfile\n")
    write_text(folder / "a.txt", "first")  # no final newline: one is added before the next file
    write_text(folder / "sub" / "c.txt", "third\n")
    write_text(folder / ".hidden", "never read\n")
    assert read_text(folder) == "first\nsecond\nfile\nthird\n"


def test_bad_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\nbad \xff here\n")
    with pytest.raises(DataError, match=r"bad.txt:2: invalid UTF-8 at byte offset 14 \(byte "
                                        r"0xff\); if the file is in another encoding, name it: "
                                        "data.encoding=latin-1"):
        read_text(path)
    assert "\ufffd" in read_text(path, errors="replace")


def test_missing_or_empty_text_is_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="no text"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="val_fraction"):
        CharTextDataModule(str(tmp_path / "empty.txt"), val_fraction=1.0)


def test_vocabulary_from_a_checkpoint_is_kept(tmp_path):
    first = CharTextDataModule(str(write_text(tmp_path / "t.txt")), batch_size=2, bptt=8)
    first.setup("fit")
    other = CharTextDataModule(str(write_text(tmp_path / "u.txt", "zzz" * 100)), batch_size=2,
                               bptt=8)
    other.set_vocabs(first.vocabs)
    other.setup("validate")
    assert other.vocabs["chars"] is first.vocabs["chars"]
    assert set(other.splits["val"].tolist()) == {UNK_ID}  # "z" is unknown to that vocabulary


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_text_in_another_encoding_keeps_its_accents(tmp_path, encoding):
    text = "Où est la forêt ?\r\nÇà et là.\n"
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_bytes(text.encode(encoding))
    (folder / "b.txt").write_bytes("Fin.".encode(encoding))
    assert read_text(folder, encoding=encoding) == "Où est la forêt ?\nÇà et là.\nFin."
    dm = CharTextDataModule(str(folder), batch_size=1, bptt=4, encoding=encoding)
    dm.setup("fit")
    assert {"ù", "ê", "Ç", "à"} <= set(dm.vocabs["chars"].itos)
    assert dm.text_settings() == {"encoding": encoding}


def test_a_utf16_error_names_the_line_it_is_on(tmp_path):
    path = tmp_path / "bad.txt"
    # Line 3 holds a lone surrogate (d800): not valid UTF-16. Byte 2 is after the BOM.
    path.write_bytes("one\ntwo\n".encode("utf-16") + b"\x00\xd8" + "x\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"bad.txt:3: invalid utf-16 at byte offset 18"):
        read_text(path, encoding="utf-16")
    with pytest.raises(ConfigError, match="data.encoding='utf-17'"):
        CharTextDataModule(str(path), encoding="utf-17")


def test_no_test_split_is_said_in_the_log(tmp_path, caplog):
    path = str(write_text(tmp_path / "t.txt"))
    with caplog.at_level(logging.WARNING, logger="seqmodels.data.base"):
        CharTextDataModule(path, batch_size=2, bptt=8).setup("fit")
    said = [r.getMessage() for r in caplog.records if "no test split" in r.getMessage()]
    assert len(said) == 1 and "data.test_fraction=0.1" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seqmodels.data.base"):
        CharTextDataModule(path, batch_size=2, bptt=8, test_fraction=0.1).setup("fit")
    assert "no test split" not in caplog.text
