"""The hpcaf harvester: REST API, agents, providers, images and the client CLIs."""
