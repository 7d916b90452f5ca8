"""Pixels: the preprocessing that train, evaluate and predict share, colour and stain handling,
the out-of-domain statistics, and the training feeds. Imports core and data only."""
