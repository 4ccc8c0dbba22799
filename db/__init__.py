"""hpcaf's SQL queue: models, states and their transitions, atomic queue operations."""
