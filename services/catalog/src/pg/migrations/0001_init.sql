-- insitu catalog schema, version 1.
-- Every record is stored as `rec`: one format-version byte and the record's
-- JSON, the same encoding the embedded backend uses. Names that are listed
-- in order use the "C" collation (byte order, as S3 lists); object keys are
-- bytea, so any UTF-8 key (NUL included) sorts by its bytes.

CREATE TABLE tenants (
    name text COLLATE "C" PRIMARY KEY,
    rec  bytea NOT NULL
);

CREATE TABLE access_keys (
    id     text COLLATE "C" PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL REFERENCES tenants (name),
    rec    bytea NOT NULL
);

CREATE TABLE buckets (
    name  text COLLATE "C" PRIMARY KEY,
    owner text COLLATE "C" NOT NULL,
    rec   bytea NOT NULL
);
-- ListBuckets reads one owner's buckets, in name order.
CREATE INDEX buckets_by_owner ON buckets (owner, name);

CREATE TABLE objects (
    bucket text COLLATE "C" NOT NULL,
    key    bytea NOT NULL,
    rec    bytea NOT NULL,
    PRIMARY KEY (bucket, key)
);

CREATE TABLE uploads (
    bucket    text COLLATE "C" NOT NULL,
    key       bytea NOT NULL,
    upload_id text COLLATE "C" NOT NULL,
    rec       bytea NOT NULL,
    PRIMARY KEY (bucket, key, upload_id)
);

CREATE TABLE parts (
    upload_id   text COLLATE "C" NOT NULL,
    part_number integer NOT NULL,
    rec         bytea NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);

-- Derived indexes, written in the same transaction as the change that
-- implies them: which record owns each blob, and blobs waiting for GC.
CREATE TABLE blob_owners (
    blob_id text COLLATE "C" PRIMARY KEY,
    rec     bytea NOT NULL
);

CREATE TABLE gc_queue (
    blob_id text COLLATE "C" PRIMARY KEY,
    rec     bytea NOT NULL
);

CREATE TABLE nodes (
    id  text COLLATE "C" PRIMARY KEY,
    rec bytea NOT NULL
);

CREATE TABLE jobs (
    tenant text COLLATE "C" NOT NULL,
    id     text COLLATE "C" NOT NULL,
    rec    bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- A job's lists: kind 'i' inputs, 'f' failed inputs, 't' map tasks,
-- 'R' reducers, 'p' reducer pieces, 'o' outputs, 'e' errors. `k` orders
-- each list: a big-endian sequence number, or (phase, reducer[, seq]).
CREATE TABLE job_items (
    job  text COLLATE "C" NOT NULL,
    kind "char" NOT NULL,
    k    bytea NOT NULL,
    rec  bytea NOT NULL,
    PRIMARY KEY (job, kind, k)
);

-- The inputs already in a job, by name, so each is added once.
CREATE TABLE job_inputs_seen (
    job   text COLLATE "C" NOT NULL,
    input bytea NOT NULL,
    PRIMARY KEY (job, input)
);
