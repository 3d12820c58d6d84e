"""HTTP entrypoint: REST API, platform callbacks and the console, in one FastAPI app."""
