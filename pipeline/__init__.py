"""DALI input pipelines: `train_loader` (§4.1 augmentation) and `eval_loader` (§6 centre / ten crops).

Both return a `Loader` of `(images, labels)` torch batches; labels are -1 (`PAD_LABEL`) on the
padding that keeps every rank's batch count equal. Errors are `PipelineError`, one line, naming the
shard (and the sample key where known).
"""

from pipeline.errors import PipelineError
from pipeline.eval import eval_loader
from pipeline.loader import PAD_LABEL, Loader
from pipeline.train import train_loader

__all__ = ["PAD_LABEL", "Loader", "PipelineError", "eval_loader", "train_loader"]
