"""The lowest layer: errors, config, manifests and atomic files, run-folder files, plots, the
seed, the progress bar, locks, image reading and TensorFlow set-up. Imports nothing of wbc
above it."""
