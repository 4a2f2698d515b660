"""Plumbing every room uses: storage, the artifact store, caching and retries, the
registry connection, errors. Imports no stage."""
