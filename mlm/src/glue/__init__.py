"""GLUE finetuning of LION BERTs (M2-BERT's glue.py / finetuning_jobs.py structure): tasks, data, metrics, jobs."""
from mlm.src.glue.tasks import FIXTURE_TASKS, GLUE_TASKS, TASKS, GlueTask, get_task

__all__ = ["FIXTURE_TASKS", "GLUE_TASKS", "TASKS", "GlueTask", "get_task"]
