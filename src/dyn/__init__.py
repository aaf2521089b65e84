"""dyn: run and study distributed LLM-serving pipelines."""

__version__ = "0.1.0"
