"""Fine-tuning sequence classifiers: the config, the loop, methods, checkpoints, metrics.

    from dynalora.training import TrainConfig, train, evaluate
    metrics = train(TrainConfig(task="mrpc", method="lora", data_dir="data/glue", output="runs/mrpc"))
    assert evaluate("runs/mrpc")["metrics"] == metrics["metrics"]
"""

from dynalora.training.api import evaluate, load_trained, train
from dynalora.training.classifier import SequenceClassifier, build_classifier
from dynalora.training.config import TrainConfig
from dynalora.training.loop import TrainingDiverged
from dynalora.training.methods import METHODS, Method, Prepared, get_method, register_method
from dynalora.training.metrics import compute_metrics, main_metric

__all__ = [
    "METHODS",
    "Method",
    "Prepared",
    "SequenceClassifier",
    "TrainConfig",
    "TrainingDiverged",
    "build_classifier",
    "compute_metrics",
    "evaluate",
    "get_method",
    "load_trained",
    "main_metric",
    "register_method",
    "train",
]
