"""Converter (mlm/src/convert_dataset.py): local-text round trip, atomic output, and the dataloader over it."""
import gzip
import itertools
import os

import pytest
import torch
from datasets import Dataset
from transformers import BertTokenizerFast

from mlm.src.config_validation import ConfigError
from mlm.src.convert_dataset import MARKER, convert, is_complete, local_documents, read_text_lines
from mlm.src.create_bert import OFFLINE_TOKENIZER_DIR
from mlm.src.text_data import build_mlm_dataloader, load_split

CORPUS = os.path.join(os.path.dirname(OFFLINE_TOKENIZER_DIR), "corpus")


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizerFast.from_pretrained(OFFLINE_TOKENIZER_DIR)


@pytest.fixture
def text_files(tmp_path):
    """Two small files cut from the shipped corpus, one .gz and one plain, with a blank line to skip."""
    docs = list(itertools.islice(read_text_lines(os.path.join(CORPUS, "moby_dick.txt.gz")), 30))
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(docs[:20]) + "\n\n")
    (tmp_path / "b.txt").write_text("\n".join(docs[20:]) + "\n", encoding="utf-8")
    return [str(tmp_path / "a.txt.gz"), str(tmp_path / "b.txt")], docs


def expected_rows(tokenizer, docs, seq_len):
    stream = [t for d in docs for t in tokenizer(d, add_special_tokens=False)["input_ids"]]
    body = seq_len - 2
    return [[tokenizer.cls_token_id] + stream[i:i + body] + [tokenizer.sep_token_id]
            for i in range(0, len(stream) - len(stream) % body, body)]


def test_local_text_round_trip_loses_and_duplicates_nothing(tmp_path, text_files, tokenizer):
    files, docs = text_files
    out = tmp_path / "out"
    summary = convert(local_documents(files, val_fraction=0.25), str(out), tokenizer, max_seq_len=32)
    assert is_complete(str(out))
    val_docs = docs[3::4]
    train_docs = [d for i, d in enumerate(docs) if i % 4 != 3]
    assert summary["splits"]["train"]["documents"] == 23 and summary["splits"]["val"]["documents"] == 7
    for split, split_docs in [("train", train_docs), ("val", val_docs)]:
        rows = load_split(str(out), split)
        assert rows[:]["input_ids"].tolist() == expected_rows(tokenizer, split_docs, 32)
        assert rows[:]["attention_mask"].eq(1).all()
        assert summary["splits"][split]["tokens"] == rows[:]["input_ids"].numel()


def test_no_concat_gives_one_padded_row_per_document(tmp_path, text_files, tokenizer):
    files, docs = text_files
    convert(local_documents(files, 0.5), str(tmp_path / "out"), tokenizer, max_seq_len=16, concat=False)
    rows = load_split(str(tmp_path / "out"), "train")
    assert len(rows) == 15
    first = tokenizer(docs[0], truncation=True, max_length=16, padding="max_length")
    assert rows[0]["input_ids"].tolist() == first["input_ids"]


def test_interrupted_conversion_leaves_nothing_that_looks_finished(tmp_path, text_files, tokenizer, monkeypatch):
    files, _ = text_files
    out = tmp_path / "data" / "out"
    real_save = Dataset.save_to_disk

    def crash_on_val(self, path, *args, **kwargs):
        if os.path.basename(path) == "val":
            raise KeyboardInterrupt("simulated interruption while writing val")
        return real_save(self, path, *args, **kwargs)
    monkeypatch.setattr(Dataset, "save_to_disk", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        convert(local_documents(files, 0.25), str(out), tokenizer, max_seq_len=32)
    assert not out.exists() and os.listdir(tmp_path / "data") == []
    with pytest.raises(ConfigError, match="not a finished conversion"):
        load_split(str(out), "train")
    # a directory killed half-way (train written, no marker) is refused too, and never silently overwritten
    monkeypatch.setattr(Dataset, "save_to_disk", real_save)
    (out / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a finished conversion"):
        load_split(str(out), "train")
    with pytest.raises(FileExistsError, match="unfinished"):
        convert(local_documents(files, 0.25), str(out), tokenizer, max_seq_len=32)
    convert(local_documents(files, 0.25), str(out), tokenizer, max_seq_len=32, overwrite=True)
    assert (out / MARKER).is_file()


def test_dataloader_masks_with_the_mlm_collator(tmp_path, text_files, tokenizer):
    files, _ = text_files
    convert(local_documents(files, 0.25), str(tmp_path / "out"), tokenizer, max_seq_len=32)
    cfg = {"dataset": {"data_local": str(tmp_path / "out"), "split": "train", "mlm_probability": 0.3},
           "drop_last": True}
    torch.manual_seed(0)
    loader = build_mlm_dataloader(cfg, tokenizer, device_batch_size=8, max_seq_len=32).dataloader
    rows = load_split(str(tmp_path / "out"), "train")[:]["input_ids"]
    batches = list(loader)
    assert len(batches) == len(rows) // 8  # drop_last
    batch = batches[0]
    assert batch["input_ids"].shape == (8, 32) and batch["attention_mask"].shape == (8, 32)
    chosen = batch["labels"] != -100
    assert 0.15 < chosen.float().mean() < 0.45
    assert (batch["input_ids"][chosen] == tokenizer.mask_token_id).float().mean() > 0.6
    assert (batch["input_ids"][~chosen] != tokenizer.mask_token_id).all()
    with pytest.raises(ValueError, match="max_seq_len=64"):
        build_mlm_dataloader(cfg, tokenizer, device_batch_size=8, max_seq_len=64)


def test_c4_source_streams_the_right_splits_and_honours_max_samples(tmp_path, tokenizer, monkeypatch):
    """The C4 path without network: load_dataset is replaced by a streaming stand-in that records its calls."""
    import datasets

    calls = []

    def fake_load_dataset(path, name, split, streaming):
        calls.append((path, name, split, streaming))
        texts = [f"{split} document number {i} about whales and ships." for i in range(50)]
        return datasets.IterableDataset.from_generator(lambda: ({"text": t, "url": "u"} for t in texts))
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from mlm.src.convert_dataset import c4_documents

    summary = convert(c4_documents(max_samples=7, max_val_samples=3), str(tmp_path / "c4"), tokenizer,
                      max_seq_len=16, concat=False)
    assert sorted(calls) == [("allenai/c4", "en", "train", True), ("allenai/c4", "en", "validation", True)]
    assert summary["splits"]["train"]["documents"] == 7 and summary["splits"]["val"]["documents"] == 3
    first = tokenizer.decode(load_split(str(tmp_path / "c4"), "val")[0]["input_ids"], skip_special_tokens=True)
    assert first.startswith("validation document number 0")
