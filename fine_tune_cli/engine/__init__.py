"""Engine: the training loop and the runtime pieces it calls (optim, checkpoints, devices)."""
