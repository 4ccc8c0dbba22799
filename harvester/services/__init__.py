"""Service functions: what the API routes and the agents do, on an ORM session."""
