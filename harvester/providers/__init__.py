"""Batch providers: where workers (pilots) run. One interface, one module each."""
