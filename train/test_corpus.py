"""Offline checks of the cleaning functions of corpus.py (no downloads).

    python -m pytest train/test_corpus.py      or      python train/test_corpus.py

The cases are small copies of what the packages hold; the full check against the shared corpus
is `python train/corpus.py --source packages ...` (see train/README.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corpus  # noqa: E402


def test_clean_text():
    raw = "  TITLE  \r\n\r\n\r\n\r\nby Someone\t\n\n   indented line   \n\n\n"
    assert corpus.clean_text(raw) == "TITLE\n\nby Someone\n\n   indented line"
    # a BOM is not whitespace: it stays (the shared Milton "Poemata" starts with one)
    assert corpus.clean_text("\ufeffPOEMATA\n") == "\ufeffPOEMATA"


def test_fortune_cookies():
    raw = ("Short one.\n%\n\tA cookie with a tab   \n\t\t-- Someone\n%\n"
           "Pittsburgh driver's test\n\t\t\t\n\n\n\n(10) Potholes are\n%\n")
    assert corpus.fortune_cookies(raw) == [
        "A cookie with a tab\n\t\t-- Someone",
        "Pittsburgh driver's test\n\n(10) Potholes are",
    ]
    # 21 characters is the shortest cookie kept, 20 is dropped
    assert corpus.fortune_cookies("x" * 20 + "\n%\n" + "y" * 21) == ["y" * 21]


def test_austen_book():
    lines = ["EMMA", "", "By Jane Austen", "", "", "VOLUME I", "", "", "CHAPTER I", "", "",
             "Emma Woodhouse, handsome,", "  clever, and rich.", "", "Second paragraph.", "",
             "VOLUME II", "", "CHAPTER I", "", "Jane Fairfax was an orphan.", "", "FINIS"]
    assert corpus.austen_book(lines) == [
        "EMMA\n\nBy Jane Austen\n\nVOLUME I\n\nCHAPTER I\n\n"
        "Emma Woodhouse, handsome, clever, and rich.\n\nSecond paragraph.\n\nVOLUME II",
        "CHAPTER I\n\nJane Fairfax was an orphan.\n\nFINIS",
    ]
    # Northanger Abbey: the advertisement is a document of its own, with the title before it
    lines = ["NORTHANGER ABBEY", "", "", "by", "", "ADVERTISEMENT BY THE AUTHORESS", "",
             "THIS little work.", "", "", "CHAPTER 1", "", "No one."]
    assert corpus.austen_book(lines) == [
        "NORTHANGER ABBEY\n\nby\n\nADVERTISEMENT BY THE AUTHORESS\n\nTHIS little work.",
        "CHAPTER 1\n\nNo one.",
    ]


def test_brown_text():
    raw = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc "
           "Jr./np ./.\n\n\nMerger/nn-hl proposed/vbn-hl \n"
           "Dirksen/np (/( Ill./np )/) said/vbd ``/`` this/dt ''/'' ./.\n")
    assert corpus.brown_text(raw) == (
        'The jury said "no evidence", and Jr..\n\n'
        'Merger proposed Dirksen (Ill.) said "this".')
    # An unbalanced quote shifts the pairing after it, as in the shared file (ca33)
    raw = ("The/at gift/nn by/in ``/`` heirs/nns of/in the/at estate/nn ,/, ``/`` "
           "Tranquility/nn-tl ''/'' ,/, was/bedz near/in ./.\n")
    assert corpus.brown_text(raw) == 'The gift by "heirs of the estate," Tranquility ", was near.'
    # quotes inside words (inches) become " as well (ce07)
    raw = "bars/nns being/beg 1/8''/nn ''/'' brass/nn in/in 1/4''/nn ''/'' and/cc ./.\n"
    assert corpus.brown_text(raw) == 'bars being 1/8"" brass in 1/4"" and.'


def test_bbe_chapters():
    src = ("from pythonbible.bible.bible import Bible\n"
           "bible = Bible('BBE', 'In the start. Then light.  Again.', "
           "{1001001: 0, 1001002: 13, 1002001: 25}, {1001001: 13, 1001002: 25, 1002001: 33})\n")
    assert corpus._bbe_chapters(src) == ["In the start. Then light.", "Again."]


def test_join_split_and_compare():
    docs = ["first\n\nline", "second"]
    text = corpus.join_docs(docs)
    assert text == "first\n\nline\n<|endoftext|>\nsecond\n"
    assert corpus.split_docs(text) == docs
    # compare() reports per part against that part's range of the reference
    ref = [f"doc {i}" for i in range(sum(corpus.SHARED_DOCS.values()))]
    lo = sum(corpus.SHARED_DOCS[p] for p in ["shakespeare", "austen"])
    mine = ref[lo:lo + corpus.SHARED_DOCS["mobydick"]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert corpus.compare([("mobydick", mine)], corpus.join_docs(ref))
        mine = mine[:3] + ["changed"] + mine[4:]
        assert not corpus.compare([("mobydick", mine)], corpus.join_docs(ref))
    assert f"document {lo + 3}: first difference" in out.getvalue()


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print(f"{name}: ok")
