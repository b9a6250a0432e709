"""Training building blocks shared by the recipes: losses, callbacks, checkpoints and Ctrl-C, model cards."""
