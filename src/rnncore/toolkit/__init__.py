"""Training around the layers: feed-forward modules and Sequential (nn), losses,
optimizers, clipping, training loops and the forecasting toolkit. Imports core only."""
