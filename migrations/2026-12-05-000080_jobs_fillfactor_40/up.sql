-- Issue 12: a claim must stay a HOT update (no index entries, no index bloat). A claimed
-- row's new version is larger than the queued one (worker_id, lease_expires_at and
-- started_at go from NULL to values), and a claim of hundreds of jobs cannot prune the old
-- versions it just made dead, so each page needs room for a bigger copy of every row on it.
-- At fillfactor 50 the last rows of a page did not fit: 75 % of S1's 20,000 claims were HOT,
-- and the others inserted into the primary key and the claim index. At 40 all were HOT, and
-- Postgres spent 24.5-26 µs of CPU a job instead of 33.5-45.5 µs (bench probe, 20,000
-- no-op jobs). Only new pages are filled to 40 %: the hot table turns over, no rewrite.
ALTER TABLE jobs SET (fillfactor = 40);
