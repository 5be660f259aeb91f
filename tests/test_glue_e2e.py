"""End to end: a tiny pretraining checkpoint -> mlm/glue.py's pipeline on the offline fixture -> a results table,
and the MNLI -> RTE/STS-B initialisation (here: the MNLI-like sentence-order task -> its RTE-/STS-B-like tasks)."""
import json
import math

import pytest
import torch
from composer import Callback, Trainer
from composer.utils import reproducibility
from omegaconf import OmegaConf

from mlm.src.create_bert import create_bert_mlm
from mlm.src.glue.checkpoint import model_weights, read_checkpoint
from mlm.src.glue.report import summarize, write_report
from mlm.src.glue.runner import train

# lion-lit: every token reaches [CLS] in one layer; a from-scratch lion-d [CLS] mostly sees its neighbours
# (decay sigmoid(a)^|i-j| with a ~ randn), so it needs more steps to beat chance on sentiment
TINY = dict(arch_type="lion-lit", layer_norm_after=True, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TOKENIZER = "mlm/data/bert-base-uncased"


def save_tiny_pretraining_checkpoint(path, model_config=TINY):
    """A Composer checkpoint of a tiny (untrained) LION MLM, as mlm/main.py writes them."""
    reproducibility.seed_all(0)
    model = create_bert_mlm("bert-base-uncased", model_config, tokenizer_name=TOKENIZER)
    trainer = Trainer(model=model, max_duration="0ba", device="cpu", progress_bar=False)
    trainer.save_checkpoint(str(path))
    trainer.close()
    return str(path)


class RecordStartWeights(Callback):
    """The model weights of every job at the start of its training, by run name."""

    def __init__(self):
        self.weights = {}

    def fit_start(self, state, logger):
        self.weights[state.run_name] = {k: v.detach().clone() for k, v in state.model.model.state_dict().items()}


def demo_config(tmp, checkpoint):
    cfg = OmegaConf.load("yamls/finetune-glue/demo.yaml")
    fast = {"max_duration": "1ep", "lr": 1.0e-3, "batch_size": 64}
    return OmegaConf.merge(cfg, {
        "model": {"model_config": TINY}, "starting_checkpoint_load_path": checkpoint,
        "save_finetune_checkpoint_prefix": str(tmp / "ft"), "data": {"cache_dir": str(tmp / "cache")},
        "tasks": {"rt_sentiment": {"seeds": [19], "trainer_kwargs": {**fast, "max_duration": "2ep", "lr": 2.0e-3}},
                  "moby_sentence_order": {"trainer_kwargs": {**fast, "max_duration": "6ba"}},
                  "sotu_next_sentence": {"trainer_kwargs": {**fast, "max_duration": "3ba"}},
                  "moby_sentence_distance": {"trainer_kwargs": {**fast, "max_duration": "3ba"}}}})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glue")
    checkpoint = save_tiny_pretraining_checkpoint(tmp / "pretrain.pt")
    recorder = RecordStartWeights()
    results = train(demo_config(tmp, checkpoint), extra_callbacks=[recorder])
    summary = summarize(results)
    json_path, md_path = write_report(summary, str(tmp / "report"))
    return dict(checkpoint=checkpoint, results=results, recorder=recorder, json=json_path, md=md_path)


def test_table_has_every_task_and_sentiment_is_above_chance(pipeline):
    summary = json.load(open(pipeline["json"]))
    assert set(summary["tasks"]) == {"rt_sentiment", "moby_sentence_order", "sotu_next_sentence",
                                     "moby_sentence_distance"}
    order = next(r for r in summary["runs"] if r["task"] == "moby_sentence_order")["metrics"]
    assert set(order) == {"glue_moby_sentence_order/GlueAccuracy", "glue_moby_sentence_order_mismatched/GlueAccuracy"}
    distance = next(r for r in summary["runs"] if r["task"] == "moby_sentence_distance")["metrics"]
    assert set(distance) == {"glue_moby_sentence_distance/GlueSpearman", "glue_moby_sentence_distance/GluePearson"}
    markdown = open(pipeline["md"]).read()
    assert all(t in markdown for t in summary["tasks"]) and "mean over the 4 configured task(s)" in markdown
    # 500 dev snippets: chance is 50%, its standard error 2.24 points; demand 3 standard errors above it
    accuracy = summary["tasks"]["rt_sentiment"]["score"]
    assert accuracy > 50 + 3 * 100 * math.sqrt(0.25 / 500), accuracy


def test_rte_like_tasks_start_from_the_mnli_like_checkpoint(pipeline):
    results = {r["task"]: r for r in pipeline["results"]}
    source = results["moby_sentence_order"]["checkpoint"]
    assert source and results["sotu_next_sentence"]["load_path"] == source
    saved = model_weights(read_checkpoint(source))
    pretrained = model_weights(read_checkpoint(pipeline["checkpoint"]))
    for task in ("sotu_next_sentence", "moby_sentence_distance"):
        start = pipeline["recorder"].weights[results[task]["job_name"]]
        encoder = [k for k in start if not k.startswith("classifier.")]
        assert all(torch.equal(start[k], saved[k]) for k in encoder), task
        # finetuning the source task changed the encoder, so this is not the pretraining checkpoint
        assert not all(torch.equal(start[k], pretrained[k]) for k in encoder if k in pretrained)
        # the head is new: the source head has 3 classes, these have 2 and 1 outputs
        assert start["classifier.weight"].shape[0] != saved["classifier.weight"].shape[0]
    start = pipeline["recorder"].weights[results["rt_sentiment"]["job_name"]]
    assert all(torch.equal(start[k], pretrained[k]) for k in start if k.startswith("bert.encoder"))
