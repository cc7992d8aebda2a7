"""The CoNLL-U and column-format readers, on files the tests write."""

import logging

import pytest

from seqmodels.data.conll import read_columns, read_conllu
from seqmodels.data.tagging import TaggingDataModule
from seqmodels.errors import ConfigError, DataError
from tests.conftest import write_lines


def conllu_line(word_id, form, upos, xpos):
    return "\t".join([str(word_id), form, form.lower(), upos, xpos, "_", "0", "root", "_", "_"])


# Two sentences: the first with comments, a multiword token ("don't" = do + n't) and an empty
# node; the second ends the file with no blank line after it.
CONLLU = [
    "# newdoc id = doc1",
    "# sent_id = 1",
    "# text = I don't know.",
    conllu_line(1, "I", "PRON", "PRP"),
    "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_",
    conllu_line(2, "do", "AUX", "VBP"),
    conllu_line(3, "n't", "PART", "RB"),
    conllu_line(4, "know", "VERB", "VB"),
    "4.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t0:root\t_",
    conllu_line(5, ".", "PUNCT", "."),
    "",
    "# sent_id = 2",
    conllu_line(1, "Go", "VERB", "VB"),
    conllu_line(2, "!", "PUNCT", "."),
]


def write_conllu(path, lines, trailing_blank=True):
    path.write_text("\n".join(lines) + ("\n\n" if trailing_blank else ""), encoding="utf-8")
    return path


def test_conllu_upos_skips_comments_multiword_and_empty_nodes(tmp_path, caplog):
    path = write_conllu(tmp_path / "a.conllu", CONLLU, trailing_blank=False)
    with caplog.at_level(logging.WARNING):
        sentences = read_conllu(path, "upos")
    assert [s.tokens for s in sentences] == [["I", "do", "n't", "know", "."], ["Go", "!"]]
    assert [s.tags for s in sentences] == [["PRON", "AUX", "PART", "VERB", "PUNCT"],
                                           ["VERB", "PUNCT"]]
    # Line numbers of the tokens, 1-based, counting the skipped lines.
    assert sentences[0].lines == [4, 6, 7, 8, 10]
    assert sentences[1].lines == [13, 14]
    # The last sentence had no blank line after it: read, with a warning naming the line.
    assert "ends without a blank line" in caplog.text and ":14:" in caplog.text


def test_conllu_xpos_column_and_trailing_blank_line(tmp_path, caplog):
    path = write_conllu(tmp_path / "a.conllu", CONLLU, trailing_blank=True)
    with caplog.at_level(logging.WARNING):
        sentences = read_conllu(path, "xpos")
    assert [s.tags for s in sentences] == [["PRP", "VBP", "RB", "VB", "."], ["VB", "."]]
    assert caplog.text == ""  # a well-formed file reads silently


def test_conllu_windows_line_endings(tmp_path):
    path = tmp_path / "crlf.conllu"
    path.write_bytes(("\r\n".join(CONLLU) + "\r\n\r\n").encode())
    assert [s.tokens for s in read_conllu(path)][1] == ["Go", "!"]


def test_empty_sentences_are_skipped_and_counted(tmp_path, caplog):
    lines = ["# sent_id = 1", "", "# sent_id = 2", "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_", "",
             conllu_line(1, "Hi", "INTJ", "UH"), "", "", ""]  # extra blank lines: no sentence
    path = write_lines(tmp_path / "e.conllu", lines)
    with caplog.at_level(logging.WARNING):
        sentences = read_conllu(path)
    assert [s.tokens for s in sentences] == [["Hi"]]
    assert "skipped 2 empty sentences" in caplog.text


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("1\tI\tI\tPRON\tPRP", r"expected 10 tab-separated columns \(CoNLL-U\), found 5"),
        (conllu_line(1, "I", "_", "PRP"), "has no UPOS tag"),
        (conllu_line("x", "I", "PRON", "PRP"), "not a word index"),
    ],
)
def test_conllu_bad_lines_name_file_and_line(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "bad.conllu",
                       ["# sent_id = 1", conllu_line(1, "Hello", "INTJ", "UH"), bad_line, ""])
    with pytest.raises(DataError, match=message) as error:
        read_conllu(path)
    assert error.value.line == 3 and str(error.value).startswith(f"{path}:3: ")


def test_conllu_unknown_tag_column(tmp_path):
    path = write_conllu(tmp_path / "a.conllu", CONLLU)
    with pytest.raises(DataError, match="tag_column='deprel'"):
        read_conllu(path, "deprel")


# CoNLL-2003 style: token, POS, chunk, NER; -DOCSTART- lines and blank lines between sentences.
COLUMNS = [
    "-DOCSTART- -X- -X- O",
    "",
    "EU NNP B-NP B-ORG",
    "rejects VBZ B-VP O",
    "German JJ B-NP B-MISC",
    "",
    "",
    "Peter NNP B-NP B-PER",
    "Blackburn NNP I-NP I-PER",
    "",
    "-DOCSTART- -X- -X- O",
    "",
    "BRUSSELS NNP B-NP B-LOC",
]


def test_column_format_skips_docstart_and_chooses_columns(tmp_path):
    path = write_lines(tmp_path / "ner.txt", COLUMNS)
    sentences = read_columns(path)  # token 0, tag -1 (NER)
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German"],
                                             ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"],
                                           ["B-LOC"]]
    assert sentences[1].lines == [8, 9]
    chunks = read_columns(path, token_column=0, tag_column=2)
    assert chunks[0].tags == ["B-NP", "B-VP", "B-NP"]


def test_column_format_tab_separated(tmp_path):
    path = write_lines(tmp_path / "pos.tsv", ["The\tDT", "cat\tNN", "", "Runs\tVBZ"])
    sentences = read_columns(path)
    assert [s.tags for s in sentences] == [["DT", "NN"], ["VBZ"]]


def test_column_format_missing_tag_names_line(tmp_path):
    path = write_lines(tmp_path / "ner.txt", ["EU NNP B-NP B-ORG", "rejects VBZ B-VP", ""])
    with pytest.raises(DataError, match="too few columns: 3, but the file's first token line "
                                        "has 4") as error:
        read_columns(path)
    assert error.value.line == 2


def test_column_format_single_column_is_refused(tmp_path):
    path = write_lines(tmp_path / "tokens.txt", ["EU", "rejects", ""])
    with pytest.raises(DataError, match="name the same column of 1") as error:
        read_columns(path)
    assert error.value.line == 1


def test_column_format_out_of_range_column(tmp_path):
    path = write_lines(tmp_path / "pos.txt", ["The DT", ""])
    with pytest.raises(DataError, match="data.tag_column=3 is out of range"):
        read_columns(path, tag_column=3)


# -- encodings ------------------------------------------------------------------------------------
SPANISH = [("El", "DET", "DA0MS0"), ("ñandú", "NOUN", "NCMS000"), ("corrió", "VERB", "VMIS3S0")]


def write_encoded(path, lines, encoding):
    path.write_bytes(("\n".join(lines) + "\n\n").encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_conllu_in_another_encoding(tmp_path, encoding):
    lines = ["# text = El ñandú corrió", *(conllu_line(i, form, upos, xpos) for i, (form, upos,
             xpos) in enumerate(SPANISH, start=1))]
    path = write_encoded(tmp_path / "es.conllu", lines, encoding)
    [sentence] = read_conllu(path, encoding=encoding)
    assert sentence.tokens == ["El", "ñandú", "corrió"]
    assert sentence.tags == ["DET", "NOUN", "VERB"] and sentence.lines == [2, 3, 4]
    with pytest.raises(DataError, match="invalid UTF-8 at byte offset .*data.encoding=latin-1"):
        read_conllu(path)


def test_column_format_in_latin1_names_the_bad_line_in_utf8(tmp_path):
    path = write_encoded(tmp_path / "es.txt", [f"{form} {xpos}" for form, _, xpos in SPANISH],
                         "latin-1")
    assert read_columns(path, encoding="latin-1")[0].tokens == ["El", "ñandú", "corrió"]
    # "El DA0MS0\n" is 10 bytes, then "\xf1" (ñ in Latin-1) starts line 2.
    with pytest.raises(DataError, match=r"es.txt:2: invalid UTF-8 at byte offset 10 "
                                        r"\(byte 0xf1\)"):
        read_columns(path)
    assert read_columns(path, errors="replace")[0].tokens[1] == "\ufffdand\ufffd"


@pytest.mark.parametrize("fmt,tag_column", [("conllu", "upos"), ("column", -1)])
def test_tagging_datamodule_reads_and_records_its_encoding(tmp_path, fmt, tag_column):
    if fmt == "conllu":
        lines = [conllu_line(i, f, u, x) for i, (f, u, x) in enumerate(SPANISH, start=1)]
    else:
        lines = [f"{form} {upos}" for form, upos, _ in SPANISH]
    path = write_encoded(tmp_path / "train.txt", lines, "cp1252")
    dm = TaggingDataModule(str(path), val_path=str(path), format=fmt, tag_column=tag_column,
                           encoding="cp1252")
    dm.setup("fit")
    assert sorted(dm.vocabs["tokens"].itos[2:]) == ["El", "corrió", "ñandú"]
    assert "ñ" in dm.vocabs["chars"] and dm.vocabs["tags"].itos == ["DET", "NOUN", "VERB"]
    assert dm.text_settings() == {"encoding": "cp1252", "lowercase": False,
                                  "max_word_length": 30}
    with pytest.raises(ConfigError, match="data.encoding='klingon' is not a Python text"):
        TaggingDataModule(str(path), encoding="klingon")
