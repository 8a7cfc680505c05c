"""The DDPM run: its configuration, train step, trainer, context sources and sampling requests."""
