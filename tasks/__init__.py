"""tweetflow's rooms, by concern; imports run downward only.

- ``stages``: one module (or package) per retrain stage, each with its config,
  pure functions and one thin Prefect task;
- ``release``: publishing, tracking, the promotion gate, promotion, the report;
- ``serving``: loading a verified model, resolving the champion, inference;
- ``ml``: what training and serving share (cleaning, tokenising, embedding, the
  model bundle format);
- ``infra``: storage, the artifact store, caching and retries, the registry
  connection, errors.
"""
