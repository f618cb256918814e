"""Sample media for the README and first tries: see make_samples.py for what each file is."""
