-- Refresh secrets a session has already rotated away from (issue 17, item 3). Only a secret
-- found here counts as reuse and revokes the session; any other mismatch is a plain 401, so
-- knowing a session id (it is in every JWT and the audit log) is not enough to revoke it.
-- Rows go with their session (pruned by maintenance once it ended).
CREATE TABLE refresh_token_history (
    token_hash text PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    superseded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_token_history_session_idx ON refresh_token_history (session_id);
