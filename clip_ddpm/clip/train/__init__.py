"""Contrastive CLIP training: configuration, initialisation, step, trainer and evaluation."""
