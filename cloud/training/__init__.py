"""The training loop: when to retrain from field data, and the run that does it (``loop``)."""
