-- New passwords are stored as keyed hashes (HMAC-SHA-256 under the server-side key);
-- argon2id hashes written before verify until their inbox's next rotation.
COMMENT ON COLUMN inbox_credentials.password_hash IS
    '$hmac-sha256$ + base64 HMAC-SHA-256 under MAILPLANE_CREDENTIAL_HASH_KEY, or a legacy $argon2id$ PHC string';
