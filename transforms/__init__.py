"""Payload-side programs that run inside the containers (standard library only)."""
