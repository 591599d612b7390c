-- Expunge records are pruned once older than the IMAP process's retention (imap_store
-- PRUNE_EXPUNGES). Per owner, the highest modseq pruned: a session that has seen less than
-- that may have missed an EXPUNGE, so it resynchronises its folder in full instead of
-- reading the expunge records (RFC 3501 §7.4.1: every expunged message must be announced
-- before its sequence numbers are reused).
ALTER TABLE imap_owners ADD COLUMN expunges_pruned_through bigint NOT NULL DEFAULT 0;
