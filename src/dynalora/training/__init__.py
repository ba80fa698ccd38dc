"""Fine-tuning sequence classifiers: the config, the loop, methods, checkpoints, metrics.

    from dynalora.training import TrainConfig, train, evaluate
    metrics = train(TrainConfig(task="mrpc", method="lora", data_dir="data/glue", output="runs/mrpc"))
    assert evaluate("runs/mrpc")["metrics"] == metrics["metrics"]
"""

from typing import TYPE_CHECKING

from dynalora.lazy import lazy_exports

# Loaded on first use (dynalora.lazy): building a TrainConfig needs no torch.
_EXPORTS = {
    "evaluate": "dynalora.training.api", "load_trained": "dynalora.training.api", "train": "dynalora.training.api",
    "SequenceClassifier": "dynalora.training.classifier", "build_classifier": "dynalora.training.classifier",
    "TrainConfig": "dynalora.training.config",
    "TrainingDiverged": "dynalora.training.loop", "TrainingLoop": "dynalora.training.loop",
    "StepHook": "dynalora.training.hooks",
    **{name: "dynalora.training.methods" for name in ("METHODS", "Method", "Prepared", "get_method", "register_method")},
    "compute_metrics": "dynalora.training.metrics", "main_metric": "dynalora.training.metrics",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see
    from dynalora.training.api import evaluate, load_trained, train
    from dynalora.training.classifier import SequenceClassifier, build_classifier
    from dynalora.training.config import TrainConfig
    from dynalora.training.hooks import StepHook
    from dynalora.training.loop import TrainingDiverged, TrainingLoop
    from dynalora.training.methods import METHODS, Method, Prepared, get_method, register_method
    from dynalora.training.metrics import compute_metrics, main_metric

__all__ = [
    "METHODS",
    "Method",
    "Prepared",
    "SequenceClassifier",
    "StepHook",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingLoop",
    "build_classifier",
    "compute_metrics",
    "evaluate",
    "get_method",
    "load_trained",
    "main_metric",
    "register_method",
    "train",
]
