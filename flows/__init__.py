"""tweetflow flows: retrain and (later) batch inference."""
