"""The SQL side: tables, engines and sessions, per-service job counts, schema migrations."""
