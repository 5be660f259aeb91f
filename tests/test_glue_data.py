"""GLUE data: the original per-task TSV layouts, the offline fixture, and the on-disk tokenisation cache."""
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mlm.src.config_validation import ConfigError
from mlm.src.glue.data import build_dataloader, read_glue_tsv, tokenized_split
from mlm.src.glue.tasks import FIXTURE_TASKS, get_task

FIXTURE = "mlm/data/glue_fixture"
# two rows per task in the layout of the GLUE download (header line, columns, label strings)
GLUE_FILES = {
    "MNLI/dev_mismatched.tsv": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                                "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
                                "0\t1\t1n\tletters\t( a )\t( b )\t(a)\t(b)\tA man sleeps.\tNobody sleeps.\t"
                                "contradiction\tcontradiction\n"
                                "1\t2\t2e\tletters\t( a )\t( b )\t(a)\t(b)\tA dog runs.\tAn animal moves.\t"
                                "entailment\tentailment\n"),
    "QNLI/dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n1\tWhen?\tBlue.\tnot_entailment\n",
    "QQP/dev.tsv": ('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
                    '0\t1\t2\tHow to cook rice?\tHow do I cook rice?\t1\n1\t3\t4\tWhy "blue"?\tWhat is 2+2?\t0\n'),
    "SST-2/dev.tsv": "sentence\tlabel\na gorgeous film \t1\nflat and dull \t0\n",
    "CoLA/dev.tsv": "gj04\t1\t\tThe book was read.\ngj04\t0\t*\tBook the read was.\n",
    "RTE/dev.tsv": ("index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tA cat exists.\tentailment\n"
                    "1\tX.\tY.\tnot_entailment\n"),
    "MRPC/dev.tsv": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                     "1\t1\t2\tHe said yes.\tHe agreed.\n0\t3\t4\tIt rained.\tShe sang.\n"),
    "STS-B/dev.tsv": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                      "0\tmain-captions\tMSRvid\t2012test\t1\tnone\tnone\tA plane takes off.\t"
                      "An air plane is taking off.\t5.000\n"
                      "1\tmain-captions\tMSRvid\t2012test\t4\tnone\tnone\tA man plays.\tA woman cooks.\t0.500\n"),
}
EXPECTED = {"mnli": [2, 0], "qnli": [0, 1], "qqp": [1, 0], "sst2": [1, 0], "cola": [1, 0], "rte": [0, 1],
            "mrpc": [1, 0], "stsb": [5.0, 0.5]}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained("mlm/data/bert-base-uncased")


@pytest.fixture
def glue_dir(tmp_path):
    for name, text in GLUE_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_original_glue_tsv_layouts_give_hf_columns_and_labels(glue_dir, task):
    t = get_task(task)
    split = "validation_mismatched" if task == "mnli" else "validation"
    ds = read_glue_tsv(t, split, glue_dir)
    assert ds.column_names == [*t.text_columns, "label"]  # the nyu-mll/glue column names
    assert ds["label"] == pytest.approx(EXPECTED[task])
    assert all(ds[c][0].strip() for c in t.text_columns)


def test_bad_labels_and_missing_files_fail_clearly(glue_dir):
    Path(glue_dir, "RTE/dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ConfigError, match=r"labels \['maybe'\] of column 'label' are outside task rte"):
        read_glue_tsv(get_task("rte"), "validation", glue_dir)
    with pytest.raises(ConfigError, match="data.data_dir: .*CoLA/train.tsv not found"):
        read_glue_tsv(get_task("cola"), "train", glue_dir)


def test_fixture_is_small_real_and_in_glue_layout():
    files = list(Path(FIXTURE).rglob("*.tsv"))
    assert sum(f.stat().st_size for f in files) < 1_000_000
    assert (Path(FIXTURE) / "LICENSES.md").is_file()
    sizes = {}
    for name, task in FIXTURE_TASKS.items():
        for split in task.tsv_files:
            ds = read_glue_tsv(task, split, FIXTURE)
            sizes[name, split] = len(ds)
            if task.is_regression:
                assert set(ds["label"]) == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
            else:  # every class present, none above 60%
                counts = [ds["label"].count(i) for i in range(task.num_labels)]
                assert min(counts) > 0 and max(counts) < 0.6 * len(ds), (name, split, counts)
    assert sizes["rt_sentiment", "train"] == 2000 and sizes["rt_sentiment", "validation"] == 500
    assert max(sizes.values()) <= 2000
    review = read_glue_tsv(FIXTURE_TASKS["rt_sentiment"], "validation", FIXTURE)["sentence"]
    assert sum(" film" in s or " movie" in s for s in review) > 50  # real movie-review snippets


def test_tokenisation_is_cached_on_disk(tmp_path, tokenizer):
    task, cache = FIXTURE_TASKS["sotu_next_sentence"], str(tmp_path / "cache")
    first = tokenized_split(task, "validation", tokenizer, 128, FIXTURE, cache)
    files = sorted(os.listdir(tmp_path / "cache" / "tokenized"))
    assert len(files) == 1 and first.cache_files[0]["filename"].endswith(files[0])
    mtime = os.path.getmtime(first.cache_files[0]["filename"])
    again = tokenized_split(task, "validation", tokenizer, 128, FIXTURE, cache)
    assert again.cache_files == first.cache_files and os.path.getmtime(again.cache_files[0]["filename"]) == mtime
    assert again["input_ids"] == first["input_ids"]
    short = tokenized_split(task, "validation", tokenizer, 16, FIXTURE, cache)  # new length -> new cache file
    assert len(os.listdir(tmp_path / "cache" / "tokenized")) == 2 and max(map(len, short["input_ids"])) == 16
    # pairs: [CLS] a [SEP] b [SEP] with segment ids 0 then 1
    ids, types = first[0]["input_ids"], first[0]["token_type_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 2 and set(types) == {0, 1}


def test_dataloader_pads_dynamically(tmp_path, tokenizer):
    ds = tokenized_split(FIXTURE_TASKS["rt_sentiment"], "validation", tokenizer, 128, FIXTURE, str(tmp_path))
    batch = next(iter(build_dataloader(ds, tokenizer, 16, shuffle=False, seed=0)))
    longest = max(len(x) for x in ds[:16]["input_ids"])
    assert batch["input_ids"].shape == (16, -(-longest // 8) * 8)  # padded to the batch's longest, multiple of 8
    assert batch["labels"].tolist() == ds[:16]["label"]
    assert (batch["attention_mask"].sum(1) == torch_lengths(ds[:16]["input_ids"])).all()


def torch_lengths(rows):
    import torch
    return torch.tensor([len(r) for r in rows])


def test_hub_path_asks_nyu_mll_glue_and_keeps_hf_columns(monkeypatch, tmp_path, tokenizer):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):  # stands in for the hub: no network in tests
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"premise": ["A man sleeps."], "hypothesis": ["Nobody sleeps."],
                                           "label": [2], "idx": [0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = tokenized_split(get_task("mnli"), "validation_mismatched", tokenizer, 128, None, str(tmp_path))
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert sorted(ds.column_names) == ["attention_mask", "input_ids", "label", "token_type_ids"]
    with pytest.raises(ValueError, match="exists only as a local fixture: set data.data_dir"):
        tokenized_split(FIXTURE_TASKS["rt_sentiment"], "train", tokenizer, 128, None, str(tmp_path))
