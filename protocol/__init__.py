"""What the harvester and its callers (pilots, user clients) say to each other.

The request and reply bodies of the REST API, the states they carry and the
pilot error codes. Both sides import this package and it imports neither:
only pydantic and the standard library (an import-linter contract in
pyproject.toml keeps it so). Task submission takes panda-client's
task-parameter dict (camelCase, as ``pcontainer --dumpJson`` writes it); every
other body is snake_case. Create bodies and public replies are separate classes.
"""
