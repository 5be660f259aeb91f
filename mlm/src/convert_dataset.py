"""Convert C4 (``allenai/c4``, ``en``, streamed) or local text files into tokenised arrow data sets for MLM.

    python -m mlm.src.convert_dataset --dataset c4 --out_root /data/c4-bert-128 --max_samples 1000000
    python -m mlm.src.convert_dataset --local_files mlm/data/corpus/*.txt.gz --out_root data_cache/corpus-64 \
        --max_seq_len 64 --tokenizer mlm/data/bert-base-uncased

Output: ``out_root/{train,val}`` (``Dataset.save_to_disk``) with ``input_ids`` and ``attention_mask`` rows of
exactly ``max_seq_len`` tokens, plus ``out_root/COMPLETE.json``. Everything is written into a temporary sibling
directory that is renamed to ``out_root`` only once all splits are done, so a crashed or interrupted run never
leaves a directory that looks finished (``is_complete`` checks for the marker).

``--concat`` (default) packs documents HF-``run_mlm`` style: token streams are concatenated within each map batch
of ``--map_batch_size`` documents and cut into ``[CLS] … [SEP]`` rows (the remainder of a batch shorter than a row is
dropped). ``--no-concat`` gives one row per document, truncated and padded (M2-BERT's C4 setup).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zlib
from typing import Callable, Iterable, Iterator, Optional, Sequence

from datasets import Dataset
from datasets.exceptions import DatasetGenerationError

from mlm.src.processes import process_alive

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
SPLITS = ("train", "val")
C4_SPLITS = {"train": "train", "val": "validation"}


def is_complete(out_root: str) -> bool:
    return os.path.isfile(os.path.join(out_root, MARKER))


class UnreadableText(ValueError):
    """A source file that is not (gzip-compressed) UTF-8 text; the message names it."""


def read_text_lines(path: str) -> Iterator[str]:
    """One document per non-empty line; ``.gz`` files are decompressed."""
    opener = gzip.open if path.endswith(".gz") else open
    kind = "gzip-compressed UTF-8 text" if path.endswith(".gz") else "UTF-8 text"
    line_number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                line_number += 1
                if line.strip():
                    yield line.rstrip("\n")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:  # not gzip, cut short, binary, a directory
        raise UnreadableText(f"{path}: cannot be read as {kind} (line {line_number + 1}: "
                             f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def local_documents(files: Sequence[str], val_fraction: float,
                    skipped: Optional[list] = None) -> dict[str, Callable[[], Iterator[str]]]:
    """Every ``round(1/val_fraction)``-th document (counted over all files) goes to val, the rest to train.
    A file that is not text stops the conversion naming it (UnreadableText), unless ``skipped`` is a list: the file
    (its readable beginning kept) is then appended to it, logged, and the conversion goes on (``--bad-files skip``)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val_fraction must be in (0, 1), got {val_fraction}")
    every = max(2, round(1.0 / val_fraction))

    def split_docs(want_val: bool) -> Iterator[str]:
        index = 0
        for path in files:
            try:
                for doc in read_text_lines(path):
                    if (index % every == every - 1) == want_val:
                        yield doc
                    index += 1
            except UnreadableText as err:
                if skipped is None:
                    raise
                if path not in skipped:
                    skipped.append(path)
                    log.warning("skipped (--bad-files skip) %s", err)
    return {"train": lambda: split_docs(False), "val": lambda: split_docs(True)}


def c4_documents(max_samples: Optional[int], max_val_samples: Optional[int]) -> dict[str, Callable[[], Iterator[str]]]:
    """The C4 streams, opened now: a hub that cannot be reached stops here, before any work (ValueError)."""
    from datasets import load_dataset

    try:
        data = {split: load_dataset("allenai/c4", "en", split=C4_SPLITS[split], streaming=True) for split in SPLITS}
    except (ConnectionError, OSError) as err:
        raise ValueError(f"--dataset c4 streams allenai/c4 from the Hugging Face hub, which cannot be reached "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); convert local "
                         "text with --local_files instead, or run where the hub is reachable") from None
    limits = {"train": max_samples, "val": max_val_samples}

    def stream(split: str) -> Iterator[str]:
        rows = data[split] if limits[split] is None else data[split].take(limits[split])
        for row in rows:
            yield row["text"]
    return {split: (lambda split=split: stream(split)) for split in SPLITS}


def tokenize_documents(docs: Dataset, tokenizer, max_seq_len: int, concat: bool, batch_size: int,
                       num_proc: Optional[int]) -> Dataset:
    if concat:
        body = max_seq_len - 2  # room for [CLS] and [SEP]

        def pack(batch):
            stream = [t for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"] for t in ids]
            usable = len(stream) - len(stream) % body
            rows = [[tokenizer.cls_token_id] + stream[i:i + body] + [tokenizer.sep_token_id]
                    for i in range(0, usable, body)]
            return {"input_ids": rows, "attention_mask": [[1] * max_seq_len for _ in rows]}
        fn = pack
    else:
        def fn(batch):
            enc = tokenizer(batch["text"], truncation=True, max_length=max_seq_len, padding="max_length")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return docs.map(fn, batched=True, batch_size=batch_size, remove_columns=docs.column_names, num_proc=num_proc,
                    desc=f"tokenising into {max_seq_len}-token rows")


def convert(sources: dict[str, Callable[[], Iterable[str]]], out_root: str, tokenizer, max_seq_len: int = 128,
            concat: bool = True, map_batch_size: int = 1000, num_proc: Optional[int] = None,
            overwrite: bool = False, metadata: Optional[dict] = None) -> dict:
    """Tokenise every split of ``sources`` and publish ``out_root`` atomically; returns the summary."""
    if max_seq_len < 8:
        raise ValueError(f"--max_seq_len must be >= 8, got {max_seq_len}")
    out_root = os.path.abspath(out_root)
    if os.path.exists(out_root) and not os.path.isdir(out_root):
        raise FileExistsError(f"--out_root {out_root} exists and is not a directory; give a directory path")
    if os.path.exists(out_root):
        if not overwrite:
            state = "a finished conversion" if is_complete(out_root) else "an unfinished or foreign directory"
            raise FileExistsError(f"--out_root {out_root} already exists ({state}); pass --overwrite or remove it")
    parent = os.path.dirname(out_root)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(out_root)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_root)}.tmp-{os.getpid()}-", dir=parent)
    os.chmod(tmp, 0o755)
    cache = os.path.join(tmp, "cache")  # arrow scratch files of this run only; removed before publishing
    try:
        summary = {"max_seq_len": max_seq_len, "concat": concat, "splits": {}, **(metadata or {})}
        for split, docs in sources.items():
            try:
                texts = Dataset.from_generator(_rows, gen_kwargs={"docs": docs}, cache_dir=cache)
            except DatasetGenerationError as err:
                if isinstance(err.__cause__, UnreadableText):
                    raise err.__cause__ from None
                if next(iter(docs()), None) is None:  # datasets cannot build a table of no rows
                    raise ValueError(f"the {split} split has no rows: its source holds no document "
                                     "(non-empty line)") from None
                raise
            rows = tokenize_documents(texts, tokenizer, max_seq_len, concat, map_batch_size, num_proc)
            if len(rows) == 0:
                raise ValueError(f"the {split} split has no rows: its {len(texts)} documents give no "
                                 f"{max_seq_len}-token row; give more text or a smaller --max_seq_len")
            rows.save_to_disk(os.path.join(tmp, split))
            summary["splits"][split] = {"documents": len(texts), "rows": len(rows), "tokens": len(rows) * max_seq_len}
            log.info("%s: %d documents -> %d rows of %d tokens", split, len(texts), len(rows), max_seq_len)
        shutil.rmtree(cache, ignore_errors=True)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(summary, f, indent=2)
        if os.path.exists(out_root):
            shutil.rmtree(out_root)
        os.replace(tmp, out_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def remove_stale_temporaries(out_root: str) -> None:
    """Remove the temporary directories of killed conversions into ``out_root`` (their process is gone)."""
    pattern = re.compile(rf"^\.{re.escape(os.path.basename(out_root))}\.tmp-(\d+)-")
    for name in os.listdir(os.path.dirname(out_root)):
        match = pattern.match(name)
        if match and not process_alive(int(match.group(1))):
            log.info("removing %s, left by an interrupted conversion", name)
            shutil.rmtree(os.path.join(os.path.dirname(out_root), name), ignore_errors=True)



def _rows(docs):
    for text in docs():
        yield {"text": text}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "integer >= 1"  # argparse names the type in its message


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=["c4"], help="stream allenai/c4 (en) through HF datasets")
    src.add_argument("--local_files", nargs="+", help="text files (.txt or .txt.gz), one document per line")
    p.add_argument("--out_root", required=True)
    p.add_argument("--tokenizer", default="bert-base-uncased")
    p.add_argument("--max_seq_len", type=_positive_int, default=128)
    p.add_argument("--max_samples", type=_positive_int, default=None, help="C4: documents to take from train")
    p.add_argument("--max_val_samples", type=_positive_int, default=None, help="C4: documents to take from validation")
    p.add_argument("--val_fraction", type=float, default=0.05, help="local files: share of documents for val")
    p.add_argument("--concat", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--map_batch_size", type=_positive_int, default=1000)
    p.add_argument("--num_proc", type=_positive_int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--bad-files", choices=("stop", "skip"), default="stop",
                   help="local files: one that is not (gzip-compressed) UTF-8 text stops the conversion naming it; "
                        "skip: keep its readable beginning, go on, and list it in COMPLETE.json (skipped_files)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Converts; a bad argument or input ends with one line and exit code 1 (no traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    except OSError as err:
        sys.exit(f"error: --tokenizer {args.tokenizer!r} cannot be loaded: {str(err).splitlines()[0]}")
    if args.local_files:
        files = sorted({f for pattern in args.local_files for f in glob.glob(pattern)})
        if not files:
            sys.exit(f"error: --local_files matched no file: {args.local_files}")
        skipped = [] if args.bad_files == "skip" else None  # filled while converting, written in COMPLETE.json
        sources = local_documents(files, args.val_fraction, skipped)
        meta = {"source": files, **({"skipped_files": skipped} if skipped is not None else {})}
    try:
        if not args.local_files:
            sources, meta = c4_documents(args.max_samples, args.max_val_samples), {"source": "allenai/c4 en"}
        summary = convert(sources, args.out_root, tokenizer, args.max_seq_len, args.concat, args.map_batch_size,
                          args.num_proc, args.overwrite, {**meta, "tokenizer": args.tokenizer})
    except (ValueError, FileExistsError) as err:  # bad arguments, empty or undecodable text
        hint = "; --bad-files skip skips such files" if isinstance(err, UnreadableText) else ""
        sys.exit(f"error: {str(err).splitlines()[0]}{hint}")
    log.info("wrote %s: %s", args.out_root, json.dumps(summary["splits"]))
    if summary.get("skipped_files"):
        log.warning("%d unreadable file(s) skipped: %s", len(summary["skipped_files"]), summary["skipped_files"])


if __name__ == "__main__":
    main()
