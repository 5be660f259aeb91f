"""GLUE finetuning from a Composer pretraining checkpoint to a GLUE table.

    python3 mlm/glue.py yamls/finetune-glue/lion-d-base.yaml [key=value overrides ...]

Runs MNLI, QNLI, QQP, SST-2, CoLA, then RTE, MRPC, STS-B from the MNLI checkpoint (mlm/src/glue/runner.py), prints
the table and writes it as JSON and markdown to ``results_folder`` (default: save_finetune_checkpoint_folder).
Every field, the checkpoint and local GLUE files are checked before any training: a bad one ends with one line.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from lion.multi_gpu import disable_nvlink_multicast
from mlm.src.builders import NonFiniteLossError
from mlm.src.config_validation import ConfigError, load_config
from mlm.src.glue.report import summarize, to_markdown, write_report
from mlm.src.glue.runner import train

disable_nvlink_multicast()  # before any process group (NCCL reads NCCL_NVLS_ENABLE when it builds a communicator)


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python3 mlm/glue.py YAML [key=value ...]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg, source = load_config(argv[0], argv[1:])
        results = train(cfg, source=source)
    except (ConfigError, NonFiniteLossError) as e:
        message = str(e) if str(e).startswith(argv[0]) else f"{argv[0]}: {e}"
        sys.exit(f"glue.py: {message}")
    summary = summarize(results)
    print(to_markdown(summary))  # the CLI's output
    folder = cfg.get("results_folder") or cfg.save_finetune_checkpoint_folder
    for path in write_report(summary, folder):
        print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1:])
