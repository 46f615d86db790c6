-- The multiset hash of the sealed heads (src/store/chain.rs, HeadsState), whose
-- SHA-256 is the seal's digest: the next seal moves it by the streams that moved,
-- without reading every head. NULL for seals taken before (their digest is the
-- legacy one over every head in order).
ALTER TABLE chain_seals ADD COLUMN heads_state text NULL;
