"""Offline distillation text: docstring sentences of installed packages, disjoint from the eval split."""
from __future__ import annotations

import numpy as np

from pocketml.convert import corpus, datasets
from pocketml.convert.compress.report import neighbour_agreement


def test_docstring_sentences_are_prose_deterministic_and_disjoint_from_eval():
    evaluation = set(datasets.sentences("eval"))
    a, source = corpus.docstring_sentences(300, exclude=evaluation, packages=("click",))
    b, _ = corpus.docstring_sentences(300, exclude=evaluation, packages=("click",))
    assert a == b and 50 <= len(a) <= 300                     # same installed version → same text
    assert not evaluation & set(a)
    assert all(8 <= len(s.split()) <= 40 and s.endswith(".") and s[0].isupper() for s in a)
    assert not any(bad in s for s in a for bad in corpus.BANNED)
    assert len({s.lower() for s in a}) == len(a)
    assert source.startswith(f"{len(a)} sentences") and "click " in source


def test_exclusion_removes_given_sentences():
    a, _ = corpus.docstring_sentences(100, exclude=set(), packages=("click",))
    b, _ = corpus.docstring_sentences(100, exclude=set(a[:10]), packages=("click",))
    assert not set(a[:10]) & set(b)


def test_prose_filter():
    doc = "Return the value. This function returns the current value of the counter as an integer. Then X = 1 is set in code here."
    assert list(corpus.prose_sentences(doc)) == ["This function returns the current value of the counter as an integer."]


def test_neighbour_agreement():
    t = [np.array([1.0, 0.0]), np.array([0.9, 0.1]), np.array([0.0, 1.0]), np.array([0.1, 0.9])]
    assert neighbour_agreement(t, t) == 1.0
    swapped = [t[0], t[2], t[1], t[3]]       # sample 1 and 2 trade places: their neighbours change
    assert neighbour_agreement(t, swapped) == 0.0
    assert neighbour_agreement(t[:2], t[:2]) is None


def test_near_duplicates_of_excluded_sentences_are_recognised():
    near = corpus.NearDuplicates({"Return true if the object is a coroutine."})
    assert "Return True if the object is a coroutine function." in near       # restated: left out
    assert "Return the number of items in the queue right now." not in near


def test_a_docstring_holding_an_excluded_sentence_is_left_out_whole():
    a, _ = corpus.docstring_sentences(10_000, exclude=set(), packages=("click",))
    doc = next(d for p in corpus.source_files("click", corpus.package_root("click"))
               for d in corpus.file_docstrings(p) if len(list(corpus.prose_sentences(d))) >= 2)
    first, *rest = corpus.prose_sentences(doc)
    b, source = corpus.docstring_sentences(10_000, exclude={first}, packages=("click",))
    assert first not in b and not set(rest) & set(b)          # its neighbours go too
    assert "docstrings holding one or a near-duplicate left out whole" in source


def test_standard_library_is_a_source_without_site_packages():
    root = corpus.package_root(corpus.STDLIB)
    assert (root / "os.py").is_file()
    files = list(corpus.source_files(corpus.STDLIB, root))
    assert files and not any("site-packages" in p.parts for p in files)
