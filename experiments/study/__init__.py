"""The "no text labels" study: its configuration, phases and report (run by experiments/no_text_labels.py)."""
