"""Harvester agents: each does one job on a cycle (split, broker, submit, monitor, sweep, watch)."""
