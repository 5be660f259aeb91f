"""The experiment scripts run end to end with --smoke on CPU and write sane, resumable results."""
import json

import pytest

from experiments import mlm_small, vision_fmnist


def test_vision_smoke_trains_every_variant_and_resumes(tmp_path, capsys):
    results = vision_fmnist.main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "vision_fmnist.json").read_text())
    assert saved["runs"].keys() == results["runs"].keys() == {f"{v}/seed0" for v in vision_fmnist.SMOKE_VARIANTS}
    rows = {row["variant"]: row for row in saved["table"]}
    assert rows["DeiT"]["time_ratio"] == pytest.approx(1.0)
    for variant, row in rows.items():
        assert 0.0 <= row["top1_mean"] <= 100.0 and row["epoch_s"] > 0 and row["step_ms"] > 0
        assert row["paper_top1"] == vision_fmnist.PAPER[variant][0]
        run = saved["runs"][f"{variant}/seed0"]
        assert len(run["history"]) == 1 and run["history"][0]["train_loss"] > 0
    # the LION models are LION models (their gates exist), DeiT is the softmax ViT
    assert saved["runs"]["LION-S♮/seed0"]["params"] > saved["runs"]["LION-Lit/seed0"]["params"]
    capsys.readouterr()
    vision_fmnist.main(["--smoke", "--out", str(tmp_path)])  # resumable: nothing is trained again
    assert capsys.readouterr().out.count("[skip]") == len(vision_fmnist.SMOKE_VARIANTS)


def test_vision_rejects_bad_epochs(tmp_path):
    with pytest.raises(SystemExit):
        vision_fmnist.parse_args(["--epochs", "0", "--out", str(tmp_path)])


def test_mlm_smoke_pretrains_finetunes_merges_and_resumes(tmp_path, capfd):  # fd level: Composer's bars need fileno()
    """Two models trained apart (as on two GPUs), then one table from both; nothing is trained twice."""
    def run(*extra):
        return mlm_small.main(["--smoke", "--work-dir", str(tmp_path / "w"), *extra])

    run("--archs", "BERT", "--step-rounds", "0", "--out", str(tmp_path / "a"))
    run("--archs", "LION-S", "--step-rounds", "0", "--out", str(tmp_path / "b"))
    capfd.readouterr()
    merged = ["--archs", "BERT", "LION-S", "--out", str(tmp_path / "out"), "--merge", str(tmp_path / "a"),
              str(tmp_path / "b")]
    run(*merged)
    assert capfd.readouterr().out.count("[skip]") == 2  # both pretrainings came from the merged folders
    saved = json.loads((tmp_path / "out" / "mlm_small.json").read_text())
    rows = {row["model"]: row for row in saved["table"]}
    assert set(rows) == {"BERT", "LION-S"} and rows["BERT"]["time_ratio"] == pytest.approx(1.0)
    assert rows["LION-S"]["step_ratio"] > 0  # the interleaved timing ran once both were there
    for arch, row in rows.items():
        assert 0.0 <= row["val_masked_acc"] <= 100.0 and row["train_s"] > 0
        assert set(row["glue_tasks"]) == {"rt_sentiment"} and 0.0 <= row["glue_average"] <= 100.0
        assert saved["runs"][arch]["pretrain"]["arch_type"] == mlm_small.ARCHS[arch]
    run(*merged)  # resumable: both models are skipped again
    assert capfd.readouterr().out.count("[skip]") == 2


def test_vision_merge_joins_runs_made_apart_and_refuses_other_settings(tmp_path, capsys):
    """Seeds (or variants) run side by side on several GPUs come together in one table; no run is trained again."""
    vision_fmnist.main(["--smoke", "--variants", "DeiT", "LION-D", "--out", str(tmp_path / "a")])
    vision_fmnist.main(["--smoke", "--variants", "DeiT", "LION-D", "--seeds", "1", "--out", str(tmp_path / "b")])
    capsys.readouterr()
    merged = vision_fmnist.main(["--smoke", "--variants", "DeiT", "LION-D", "--seeds", "0", "1",
                                 "--out", str(tmp_path / "all"), "--merge", str(tmp_path / "a"), str(tmp_path / "b")])
    assert capsys.readouterr().out.count("[skip]") == 4
    assert set(merged["runs"]) == {"DeiT/seed0", "DeiT/seed1", "LION-D/seed0", "LION-D/seed1"}
    rows = {row["variant"]: row for row in merged["table"]}
    assert rows["LION-D"]["seeds"] == [0, 1] and rows["DeiT"]["time_ratio"] == pytest.approx(1.0)
    a = json.loads((tmp_path / "a" / "vision_fmnist.json").read_text())
    assert merged["runs"]["LION-D/seed0"] == a["runs"]["LION-D/seed0"]
    with pytest.raises(SystemExit, match="other settings"):
        vision_fmnist.main(["--smoke", "--lr", "0.5", "--out", str(tmp_path / "c"), "--merge", str(tmp_path / "a")])
