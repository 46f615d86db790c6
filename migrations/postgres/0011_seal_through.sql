-- How far in the global order (event_positions.global_position) a seal has looked:
-- the next seal reads only the streams that moved after it (src/store/chain.rs).
-- NULL for seals taken before: the next seal then checks every stream.
ALTER TABLE chain_seals ADD COLUMN through_position bigint NULL;
