-- Which process recorded a state transition or a kill-switch change: the daemon's observer logs
-- the changes that other processes (the CLI) record, and skips its own, which it logged when it
-- made them.
ALTER TABLE state_transitions ADD COLUMN writer_pid integer;
ALTER TABLE system_events ADD COLUMN writer_pid integer;
