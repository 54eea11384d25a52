"""The Postgres adapter: the pool and its breaker, the unit of work with its repositories, migrations."""
