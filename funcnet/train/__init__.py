"""The training engine: state, steps, data, optimizers, checkpoints, logs, the loop and the CLI."""
