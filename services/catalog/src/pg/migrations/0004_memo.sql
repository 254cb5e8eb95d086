-- insitu catalog schema, version 4: memoized tasks (a job's `memoize`),
-- per tenant by fingerprint, and each tenant's entry count, so that the
-- oldest past the cap can go without counting them all.

CREATE TABLE job_memo (
    tenant      text COLLATE "C" NOT NULL,
    fingerprint text COLLATE "C" NOT NULL,
    created_ms  bigint NOT NULL,
    rec         bytea NOT NULL,
    PRIMARY KEY (tenant, fingerprint)
);
CREATE INDEX job_memo_by_age ON job_memo (tenant, created_ms, fingerprint);

CREATE TABLE job_memo_counts (
    tenant text COLLATE "C" PRIMARY KEY,
    n      bigint NOT NULL
);
