"""Shared utilities: one-sentence input checks, atomic file writes, the image-grid writer, typed validation,
optional extras, FLOP counts, the weight-resolution rule for frozen networks and library versions."""
