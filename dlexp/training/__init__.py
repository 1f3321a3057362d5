"""Training: one fold at a time (``loop``) or all folds at once as one stacked model (``batched``), the loss
wrapper, the device choice and the progress shown while it runs."""
