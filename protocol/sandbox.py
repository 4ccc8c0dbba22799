"""The limits of a sandbox (a user's work directory shipped with the job), which the
client, the harvester and the pilot each enforce. Plain constants: the user CLIs import
this without pydantic."""

MAX_SANDBOX_BYTES = 100 * 1024 * 1024
"""The largest sandbox (a user's work directory, gzipped) a task may carry."""
MAX_SANDBOX_UNPACKED_BYTES = 2 * 1024 * 1024 * 1024
"""The most a pilot unpacks from one sandbox (a gzip bomb stops here)."""
MAX_SANDBOX_MEMBERS = 100_000
"""The most files and folders a pilot unpacks from one sandbox."""
