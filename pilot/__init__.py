"""The hpcaf pilot: pulls jobs from the harvester and runs them in containers."""
