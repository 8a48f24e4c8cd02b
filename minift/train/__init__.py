"""Training loops: the Trainer and the default ``minift train`` demo."""

from minift.train.trainer import MetricsLog, Trainer, TrainResult
