"""featdistill: efficient knowledge, feature and dataset distillation for PyTorch."""

__version__ = "0.1.0"
