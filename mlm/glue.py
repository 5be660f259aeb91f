"""GLUE finetuning from a Composer pretraining checkpoint to a GLUE table.

    python3 mlm/glue.py yamls/finetune-glue/lion-d-base.yaml [key=value overrides ...]

Runs MNLI, QNLI, QQP, SST-2, CoLA, then RTE, MRPC, STS-B from the MNLI checkpoint (mlm/src/glue/runner.py), prints
the table and writes it as JSON and markdown to ``results_folder`` (default: save_finetune_checkpoint_folder).
"""
import logging
import os
import sys

from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from mlm.src.glue.report import summarize, to_markdown, write_report  # noqa: E402
from mlm.src.glue.runner import GlueConfigError, train  # noqa: E402


def main(argv):
    if not argv:
        sys.exit('usage: python3 mlm/glue.py YAML [key=value ...]')
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    cfg = OmegaConf.merge(OmegaConf.load(argv[0]), OmegaConf.from_cli(argv[1:]))
    try:
        results = train(cfg)
    except GlueConfigError as e:
        sys.exit(f'glue.py: {e}')
    summary = summarize(results)
    print(to_markdown(summary))
    folder = cfg.get('results_folder') or cfg.save_finetune_checkpoint_folder
    for path in write_report(summary, folder):
        print('wrote', path)


if __name__ == '__main__':
    main(sys.argv[1:])
