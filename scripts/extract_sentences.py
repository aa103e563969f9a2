"""Rebuild convert/data/sentences.txt: real English sentences from CPython stdlib docstrings.

Run with the Python the data should come from: `python scripts/extract_sentences.py`. The prose filter
is convert/corpus.py's (since 2026-11; it also drops sentences with "http" or "TODO"), so a re-run may
differ from the committed file in such sentences.
"""
import importlib
import inspect
import random
import warnings
from pathlib import Path

from pocketml.convert.corpus import prose_sentences

MODULES = """abc argparse asyncio base64 bisect calendar collections concurrent.futures contextlib copy csv
dataclasses datetime decimal difflib email enum fileinput fnmatch fractions ftplib functools getopt gettext
glob gzip hashlib heapq hmac html http.client imaplib inspect io ipaddress itertools json logging mailbox
mimetypes numbers operator optparse os pathlib pickle pkgutil platform poplib pprint queue random re sched
secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl statistics string struct
subprocess tarfile tempfile textwrap threading timeit tokenize trace traceback turtle unittest urllib.parse
urllib.request uuid warnings wave weakref webbrowser xml.dom.minidom zipfile zoneinfo""".split()
HEADER = """# Real English sentences for pocketml's built-in text model (minilm-l6).
# Source: docstrings of the CPython 3.11 standard library (PSF License), extracted by
# scripts/extract_sentences.py and shuffled with seed 0. The first half of the sentences is the
# calibration/training split, the second half the evaluation split (disjoint).
"""


def docstrings(module):
    yield module.__doc__
    for _, obj in sorted(vars(module).items()):
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == module.__name__:
            yield obj.__doc__


def sentences():
    seen, out = set(), []
    for name in MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
        for doc in docstrings(module):
            if not isinstance(doc, str):
                continue
            for s in prose_sentences(doc):      # the filter shared with convert/corpus.py
                if s.lower() not in seen:
                    seen.add(s.lower())
                    out.append(s)
    return out


if __name__ == "__main__":
    out = sentences()
    random.Random(0).shuffle(out)
    out = out[:600]
    path = Path(__file__).resolve().parents[1] / "convert" / "data" / "sentences.txt"
    path.write_text(HEADER + "\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote {len(out)} sentences to {path}")
