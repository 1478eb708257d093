"""smoothtopk: exact smooth top-k SVM losses for PyTorch."""
