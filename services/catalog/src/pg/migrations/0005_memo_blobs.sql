-- insitu catalog schema, version 5: for each output blob a memo entry
-- names, the entry, so that entries go when their outputs' blobs are
-- collected. An entry's rows go with it (ON DELETE CASCADE). Entries
-- written before this version are not indexed: they are dropped when
-- next looked up with an output gone, as before.

CREATE TABLE job_memo_blobs (
    blob        text COLLATE "C" NOT NULL,
    tenant      text COLLATE "C" NOT NULL,
    fingerprint text COLLATE "C" NOT NULL,
    PRIMARY KEY (blob, tenant, fingerprint),
    FOREIGN KEY (tenant, fingerprint) REFERENCES job_memo (tenant, fingerprint)
        ON DELETE CASCADE
);
CREATE INDEX job_memo_blobs_by_entry ON job_memo_blobs (tenant, fingerprint);
