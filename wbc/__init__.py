"""wbc: white blood cell classifier (a reproducible, leak-free take on the Kaggle study)."""

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) buries wbc's own output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
