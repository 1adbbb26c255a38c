-- `ferry run cancel ID` sets `cancel_requested_at` on a running run; the scheduler running it
-- stops it at its next tick, and the run ends `cancelled`, with no retry.
ALTER TABLE runs ADD COLUMN cancel_requested_at TIMESTAMPTZ;
