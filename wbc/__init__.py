"""wbc: white blood cell classifier (a reproducible, leak-free take on the Kaggle study)."""

from wbc.core.tfsetup import tf_environment as _tf_environment

# TensorFlow reads its settings (oneDNN on, less C++ chatter) only before it is first imported;
# applying them when the package loads means every entry point (CLI, cv, tune, library, tests)
# gets them. A value you set yourself is kept.
_tf_environment()

__version__ = "0.1.0"
