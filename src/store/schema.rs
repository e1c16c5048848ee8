//! Diesel table definitions, matching `migrations/` exactly. Written in `diesel
//! print-schema`'s format; hand-maintained because diesel_cli needs libpq, which this project
//! keeps out of the tree. `tests/it/migrations.rs::schema_rs_matches_the_migrated_database`
//! compares every table, column and nullability here with the migrated database.

diesel::table! {
    audit_log (id) {
        id -> Int8,
        campus_id -> Nullable<Uuid>,
        actor_id -> Nullable<Uuid>,
        action -> Text,
        target_type -> Text,
        target_id -> Text,
        detail -> Jsonb,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    campuses (id) {
        id -> Uuid,
        name -> Text,
        slug -> Text,
        email_domains -> Array<Text>,
        time_zone -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    devices (id) {
        id -> Uuid,
        user_id -> Uuid,
        platform -> Text,
        token -> Text,
        created_at -> Timestamptz,
        last_seen_at -> Timestamptz,
    }
}

diesel::table! {
    flow_runs (id) {
        id -> Uuid,
        flow_id -> Uuid,
        version -> Int4,
        flow_name -> Text,
        campus_id -> Uuid,
        status -> Text,
        input -> Jsonb,
        user_id -> Nullable<Uuid>,
        trigger -> Text,
        unique_key -> Nullable<Text>,
        steps_remaining -> Int4,
        steps_failed -> Int4,
        event_seq -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    flow_schedules (flow_id, idx) {
        flow_id -> Uuid,
        idx -> Int4,
        version -> Int4,
        cron -> Text,
        time_zone -> Text,
        input -> Jsonb,
        next_run_at -> Timestamptz,
    }
}

diesel::table! {
    flow_steps (id) {
        id -> Uuid,
        run_id -> Uuid,
        step_key -> Text,
        item_index -> Nullable<Int4>,
        state -> Text,
        deps_remaining -> Int4,
        items_total -> Nullable<Int4>,
        items_remaining -> Nullable<Int4>,
        items_failed -> Int4,
        job_id -> Nullable<Uuid>,
        attempt -> Int4,
        input -> Nullable<Jsonb>,
        output -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    flow_versions (flow_id, version) {
        flow_id -> Uuid,
        version -> Int4,
        definition -> Jsonb,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    flows (id) {
        id -> Uuid,
        campus_id -> Uuid,
        name -> Text,
        description -> Text,
        version -> Int4,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    idempotency_keys (user_id, key) {
        user_id -> Uuid,
        key -> Text,
        request_hash -> Text,
        status_code -> Nullable<Int4>,
        response_body -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    import_uploads (job_id) {
        job_id -> Uuid,
        csv -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    jobs (id) {
        id -> Uuid,
        kind -> Text,
        queue -> Text,
        priority -> Int2,
        state -> Text,
        payload -> Jsonb,
        unique_key -> Nullable<Text>,
        run_at -> Timestamptz,
        attempt -> Int4,
        max_attempts -> Int4,
        timeout_secs -> Int4,
        worker_id -> Nullable<Uuid>,
        lease_expires_at -> Nullable<Timestamptz>,
        progress -> Int2,
        progress_message -> Nullable<Text>,
        cancel_requested -> Bool,
        last_error -> Nullable<Text>,
        result -> Nullable<Jsonb>,
        result_content_type -> Nullable<Text>,
        result_body -> Nullable<Bytea>,
        owner_id -> Nullable<Uuid>,
        campus_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        flow_step_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    jobs_history (id) {
        id -> Uuid,
        kind -> Text,
        queue -> Text,
        priority -> Int2,
        state -> Text,
        payload -> Jsonb,
        unique_key -> Nullable<Text>,
        run_at -> Timestamptz,
        attempt -> Int4,
        max_attempts -> Int4,
        timeout_secs -> Int4,
        worker_id -> Nullable<Uuid>,
        lease_expires_at -> Nullable<Timestamptz>,
        progress -> Int2,
        progress_message -> Nullable<Text>,
        cancel_requested -> Bool,
        last_error -> Nullable<Text>,
        result -> Nullable<Jsonb>,
        result_content_type -> Nullable<Text>,
        result_body -> Nullable<Bytea>,
        owner_id -> Nullable<Uuid>,
        campus_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Timestamptz,
        updated_at -> Timestamptz,
        flow_step_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    job_counts_minute (minute, kind, queue, shard) {
        minute -> Timestamptz,
        kind -> Text,
        queue -> Text,
        shard -> Int2,
        completed -> Int8,
        failed -> Int8,
        dead -> Int8,
    }
}

diesel::table! {
    job_keys (unique_key) {
        unique_key -> Text,
        job_id -> Uuid,
    }
}

diesel::table! {
    job_queues (queue) {
        queue -> Text,
        paused -> Bool,
        paused_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    menu_items (id) {
        id -> Uuid,
        vendor_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        price_cents -> Int8,
        stock -> Int4,
        available -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    order_items (order_id, menu_item_id) {
        order_id -> Uuid,
        menu_item_id -> Uuid,
        name -> Text,
        unit_price_cents -> Int8,
        quantity -> Int4,
    }
}

diesel::table! {
    orders (id) {
        id -> Uuid,
        campus_id -> Uuid,
        vendor_id -> Uuid,
        user_id -> Uuid,
        status -> Text,
        total_cents -> Int8,
        note -> Nullable<Text>,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    outbox_events (id) {
        id -> Int8,
        aggregate_type -> Text,
        aggregate_id -> Uuid,
        aggregate_version -> Int4,
        event_type -> Text,
        payload -> Jsonb,
        campus_id -> Nullable<Uuid>,
        vendor_id -> Nullable<Uuid>,
        user_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        dead_at -> Nullable<Timestamptz>,
        sinks_done -> Array<Text>,
    }
}

diesel::table! {
    refresh_token_history (token_hash) {
        token_hash -> Text,
        session_id -> Uuid,
        superseded_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        refresh_token_hash -> Text,
        refresh_generation -> Int4,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
        user_agent -> Nullable<Text>,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        campus_id -> Nullable<Uuid>,
        vendor_id -> Nullable<Uuid>,
        email -> Text,
        display_name -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    vendors (id) {
        id -> Uuid,
        campus_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        is_open -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    workers (id) {
        id -> Uuid,
        host -> Text,
        pid -> Int4,
        queues -> Array<Text>,
        concurrency -> Int4,
        running -> Int4,
        started_at -> Timestamptz,
        heartbeat_at -> Timestamptz,
    }
}

diesel::joinable!(devices -> users (user_id));
diesel::joinable!(flow_schedules -> flows (flow_id));
diesel::joinable!(flow_steps -> flow_runs (run_id));
diesel::joinable!(flow_versions -> flows (flow_id));
diesel::joinable!(flows -> campuses (campus_id));
diesel::joinable!(import_uploads -> jobs (job_id));
diesel::joinable!(menu_items -> vendors (vendor_id));
diesel::joinable!(order_items -> menu_items (menu_item_id));
diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(orders -> campuses (campus_id));
diesel::joinable!(orders -> users (user_id));
diesel::joinable!(orders -> vendors (vendor_id));
diesel::joinable!(refresh_token_history -> sessions (session_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(vendors -> campuses (campus_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    campuses,
    devices,
    flow_runs,
    flow_schedules,
    flow_steps,
    flow_versions,
    flows,
    idempotency_keys,
    import_uploads,
    job_counts_minute,
    job_keys,
    job_queues,
    jobs,
    jobs_history,
    menu_items,
    order_items,
    orders,
    outbox_events,
    refresh_token_history,
    sessions,
    users,
    vendors,
    workers,
);
