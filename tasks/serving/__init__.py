"""Using a verified model: loading it, resolving the champion, batch inference.
Imports no training stage."""
