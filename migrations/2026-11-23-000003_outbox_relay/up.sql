-- Outbox relay and realtime (issue #5).
--
-- Which sinks already took an event: a retry after a partial failure re-runs only the sinks
-- that failed (a constant default: no table rewrite, old code keeps working).
ALTER TABLE outbox_events ADD COLUMN sinks_done text[] NOT NULL DEFAULT '{}';

-- WebSocket resume: the events one tenant may see after an id (student, vendor, campus).
CREATE INDEX outbox_events_user_idx ON outbox_events (user_id, id);
CREATE INDEX outbox_events_vendor_idx ON outbox_events (vendor_id, id);
CREATE INDEX outbox_events_campus_idx ON outbox_events (campus_id, id);

-- `GET /admin/outbox?state=dead`: dead events are few and kept until retried.
CREATE INDEX outbox_events_dead_idx ON outbox_events (id) WHERE dead_at IS NOT NULL;
