"""Training building blocks shared by the recipes: losses, callbacks, model cards."""
