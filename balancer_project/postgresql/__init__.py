"""Django's PostgreSQL backend with a connection pool that sweeps its dead connections at once."""
