"""Rebuild convert/data/sentences.txt: real English sentences from CPython stdlib docstrings.

Run with the Python the data should come from: `python scripts/extract_sentences.py`.
"""
import importlib
import inspect
import random
import re
import warnings
from pathlib import Path

MODULES = """abc argparse asyncio base64 bisect calendar collections concurrent.futures contextlib copy csv
dataclasses datetime decimal difflib email enum fileinput fnmatch fractions ftplib functools getopt gettext
glob gzip hashlib heapq hmac html http.client imaplib inspect io ipaddress itertools json logging mailbox
mimetypes numbers operator optparse os pathlib pickle pkgutil platform poplib pprint queue random re sched
secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl statistics string struct
subprocess tarfile tempfile textwrap threading timeit tokenize trace traceback turtle unittest urllib.parse
urllib.request uuid warnings wave weakref webbrowser xml.dom.minidom zipfile zoneinfo""".split()
BANNED = (">>>", "::", "__", "()", "=", "\\", "*", "`", "[", "{")
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
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", re.sub(r"\s+", " ", doc)):
                s = s.strip()
                words = s.split()
                if not (8 <= len(words) <= 40 and s.endswith(".") and s[0].isupper()):
                    continue
                if sum(c.isalpha() or c == " " for c in s) / len(s) < 0.9 or any(b in s for b in BANNED):
                    continue
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
