ALTER TABLE jobs SET (fillfactor = 50);
