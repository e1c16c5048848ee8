-- One campus, one vendor, one student and 1000 menu items with plenty of stock.
INSERT INTO campuses (id, name, slug) VALUES ('00000000-0000-7000-8000-000000000001', 'Bench', 'bench');
INSERT INTO vendors (id, campus_id, name) VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'Bench vendor');
INSERT INTO users (id, campus_id, email, display_name, password_hash, role)
VALUES ('00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000001', 'bench@bench.edu', 'bench', 'x', 'student');
CREATE TABLE bench_items (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench_items SELECT n, gen_random_uuid() FROM generate_series(1, 1000) n;
INSERT INTO menu_items (id, vendor_id, name, price_cents, stock)
SELECT id, '00000000-0000-7000-8000-000000000002', 'item ' || n, 5000, 100000000 FROM bench_items;
