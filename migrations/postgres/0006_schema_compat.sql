-- Which ferry binaries may use this database. ferry changes its schema only through
-- `ferry db migrate` (or `ferry scheduler run --migrate`), and a binary whose newest migration is
-- older than the database's keeps working as long as its schema version is at least
-- `oldest_compatible`: migrations that only add tables, and columns with defaults, leave the row
-- alone, so an upgrade can go one scheduler at a time. A migration that older binaries could
-- not live with raises `oldest_compatible` to its own version and names, in `requires_ferry`,
-- the first release that has it; older binaries then refuse the database and say which
-- release to run.
CREATE TABLE schema_compat (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    oldest_compatible  BIGINT NOT NULL,
    requires_ferry     TEXT NOT NULL
);
INSERT INTO schema_compat (id, oldest_compatible, requires_ferry) VALUES (1, 1, '0.1.0');
