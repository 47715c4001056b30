"""Beat: the periodic process that judges check-ins and recovers what dead workers left behind."""
