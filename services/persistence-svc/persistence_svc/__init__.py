"""The persistence service: the only component that talks to Postgres."""
