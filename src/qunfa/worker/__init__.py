"""The worker: Huey consumer (one task per batch) plus the sweeper thread."""
