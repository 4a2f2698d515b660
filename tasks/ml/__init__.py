"""What training and serving share: cleaning, tokenising, document embedding and
the model bundle format."""
