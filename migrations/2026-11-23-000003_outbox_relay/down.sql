DROP INDEX outbox_events_dead_idx;
DROP INDEX outbox_events_campus_idx;
DROP INDEX outbox_events_vendor_idx;
DROP INDEX outbox_events_user_idx;
ALTER TABLE outbox_events DROP COLUMN sinks_done;
