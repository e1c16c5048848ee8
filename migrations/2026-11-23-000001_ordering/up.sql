-- Ordering: campuses, vendors, menus, accounts, sessions, devices, orders, idempotency keys,
-- the transactional outbox and the audit log. Money is integer cents; ids are UUIDv7 made
-- by the application (time-ordered, so B-tree inserts append).

CREATE TABLE campuses (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    slug          text NOT NULL UNIQUE,
    email_domains text[] NOT NULL DEFAULT '{}',
    time_zone     text NOT NULL DEFAULT 'UTC',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Registration looks a campus up by e-mail domain.
CREATE INDEX campuses_email_domains_idx ON campuses USING gin (email_domains);
SELECT diesel_manage_updated_at('campuses');

CREATE TABLE vendors (
    id          uuid PRIMARY KEY,
    campus_id   uuid NOT NULL REFERENCES campuses (id),
    name        text NOT NULL,
    description text,
    is_open     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vendors_campus_idx ON vendors (campus_id);
SELECT diesel_manage_updated_at('vendors');

CREATE TABLE menu_items (
    id          uuid PRIMARY KEY,
    vendor_id   uuid NOT NULL REFERENCES vendors (id),
    name        text NOT NULL,
    description text,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    -- The CHECK is the last line of defence against overselling.
    stock       integer NOT NULL CHECK (stock >= 0),
    available   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX menu_items_vendor_idx ON menu_items (vendor_id);
SELECT diesel_manage_updated_at('menu_items');

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    campus_id     uuid REFERENCES campuses (id),
    vendor_id     uuid REFERENCES vendors (id),
    email         text NOT NULL UNIQUE CHECK (email = lower(email)),
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('student', 'vendor_staff', 'campus_admin', 'platform_admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'vendor_staff' OR (vendor_id IS NOT NULL AND campus_id IS NOT NULL)),
    CHECK (role NOT IN ('student', 'campus_admin') OR campus_id IS NOT NULL)
);
CREATE INDEX users_campus_idx ON users (campus_id);
SELECT diesel_manage_updated_at('users');

CREATE TABLE sessions (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Hex SHA-256 of the current refresh secret; older secrets are reuse.
    refresh_token_hash text NOT NULL,
    refresh_generation integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_used_at       timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    revoked_at         timestamptz,
    revoked_reason     text,
    user_agent         text
);
CREATE INDEX sessions_live_user_idx ON sessions (user_id, created_at) WHERE revoked_at IS NULL;

CREATE TABLE devices (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform     text NOT NULL CHECK (platform IN ('fcm', 'apns', 'onesignal', 'webpush')),
    token        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, token)
);

CREATE TABLE orders (
    id          uuid PRIMARY KEY,
    campus_id   uuid NOT NULL REFERENCES campuses (id),
    vendor_id   uuid NOT NULL REFERENCES vendors (id),
    user_id     uuid NOT NULL REFERENCES users (id),
    status      text NOT NULL CHECK (status IN ('placed', 'accepted', 'preparing', 'ready', 'picked_up', 'cancelled')),
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    note        text,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC);
CREATE INDEX orders_vendor_status_idx ON orders (vendor_id, status, created_at DESC);
CREATE INDEX orders_vendor_idx ON orders (vendor_id, created_at DESC);
CREATE INDEX orders_campus_idx ON orders (campus_id, created_at DESC);

CREATE TABLE order_items (
    order_id         uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    menu_item_id     uuid NOT NULL REFERENCES menu_items (id),
    name             text NOT NULL,
    unit_price_cents bigint NOT NULL,
    quantity         integer NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    PRIMARY KEY (order_id, menu_item_id)
);
CREATE INDEX order_items_menu_item_idx ON order_items (menu_item_id);

CREATE TABLE idempotency_keys (
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    status_code   integer,
    response_body jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

CREATE TABLE outbox_events (
    id                bigserial PRIMARY KEY,
    aggregate_type    text NOT NULL,
    aggregate_id      uuid NOT NULL,
    aggregate_version integer NOT NULL,
    event_type        text NOT NULL,
    payload           jsonb NOT NULL,
    -- Routing keys for the realtime gateway (who may see the event).
    campus_id         uuid,
    vendor_id         uuid,
    user_id           uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error        text,
    dead_at           timestamptz
);
-- The relay's claim predicate, and nothing else: published rows leave the index.
CREATE INDEX outbox_events_pending_idx ON outbox_events (next_attempt_at, id)
    WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_events_aggregate_idx ON outbox_events (aggregate_type, aggregate_id);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    campus_id   uuid,
    actor_id    uuid,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    request_id  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_campus_idx ON audit_log (campus_id, created_at DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, created_at DESC);
CREATE INDEX audit_log_action_idx ON audit_log (action, created_at DESC);
