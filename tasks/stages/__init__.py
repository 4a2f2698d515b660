"""The retrain stages, one module (or package) each: config model, pure
functions, one thin Prefect task that checks its own output contract."""
