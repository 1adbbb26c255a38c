-- Which ferry binaries may use this database; see migrations/postgres/0006_schema_compat.sql.
CREATE TABLE schema_compat (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    oldest_compatible  BIGINT NOT NULL,
    requires_ferry     TEXT NOT NULL
);
INSERT INTO schema_compat (id, oldest_compatible, requires_ferry) VALUES (1, 1, '0.1.0');
