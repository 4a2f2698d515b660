"""tweetflow stages, one module each, and the plumbing they share."""
