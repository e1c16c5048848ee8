\set item random(1, :items)
BEGIN;
SELECT m.stock FROM menu_items m JOIN bench_items b ON b.id = m.id WHERE b.n = :item FOR UPDATE OF m;
UPDATE menu_items SET stock = stock - 1 WHERE id = (SELECT id FROM bench_items WHERE n = :item);
WITH o AS (
  INSERT INTO orders (id, campus_id, vendor_id, user_id, status, total_cents)
  VALUES (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000002',
          '00000000-0000-7000-8000-000000000003', 'placed', 5000)
  RETURNING id
), i AS (
  INSERT INTO order_items (order_id, menu_item_id, name, unit_price_cents, quantity)
  SELECT o.id, b.id, 'item', 5000, 1 FROM o, bench_items b WHERE b.n = :item
)
INSERT INTO outbox_events (aggregate_type, aggregate_id, aggregate_version, event_type, payload, campus_id, vendor_id, user_id)
SELECT 'order', o.id, 1, 'order.created', jsonb_build_object('id', o.id, 'totalCents', 5000, 'items', jsonb_build_array(jsonb_build_object('name','item','quantity',1))),
       '00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000003' FROM o;
INSERT INTO audit_log (campus_id, actor_id, action, target_type, target_id, detail)
VALUES ('00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000003', 'order.placed', 'order', 'x', '{"totalCents":5000}');
COMMIT;
SELECT pg_notify('itsur_outbox', '');
