"""wbc: white blood cell classifier (a reproducible, leak-free take on the Kaggle study)."""

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) buries wbc's own output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN kernels (off by default on CPUs without AVX-512): ~3x faster training and ~10x faster
# inference of this CNN on an AVX2 CPU; set here so every entry point (cv, tune, library, tests)
# gets them, as it must be before TensorFlow is imported. A value you set is kept (0 = off).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
