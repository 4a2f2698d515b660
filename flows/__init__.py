"""tweetflow flows: retrain and batch inference (wiring only), their parameters and
command lines."""
