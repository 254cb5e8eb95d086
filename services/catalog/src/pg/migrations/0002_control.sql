-- insitu catalog schema, version 2: coordination between gateways.
-- Every expiry is in milliseconds since the epoch by the database's clock
-- (`insitu_now_ms()`), so gateways whose clocks differ agree on it.

CREATE FUNCTION insitu_now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Live gateways: where peers reach each, and what it runs (JSON).
CREATE TABLE gateways (
    id      text COLLATE "C" PRIMARY KEY,
    addr    text NOT NULL,
    seen_ms bigint NOT NULL,
    load    text NOT NULL
);

-- Leader leases of the background loops (repair, gc, orphan sweep).
CREATE TABLE leases (
    name       text COLLATE "C" PRIMARY KEY,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_ms bigint NOT NULL
);

-- Which gateway drives each unfinished job; `epoch` is the fencing token
-- every commit for the job is checked against.
CREATE TABLE job_leases (
    job        text COLLATE "C" PRIMARY KEY,
    tenant     text COLLATE "C" NOT NULL,
    owner      text NOT NULL,
    epoch      bigint NOT NULL,
    expires_ms bigint NOT NULL
);
CREATE INDEX job_leases_by_owner ON job_leases (owner);
CREATE INDEX job_leases_by_expiry ON job_leases (expires_ms);

-- Blobs a gateway is writing or reading now.
CREATE TABLE blob_intents (
    blob_id    text COLLATE "C" NOT NULL,
    holder     text NOT NULL,
    expires_ms bigint NOT NULL,
    PRIMARY KEY (blob_id, holder)
);
CREATE INDEX blob_intents_by_expiry ON blob_intents (expires_ms);

-- Every storage node's last heartbeat, whichever gateway received it.
CREATE TABLE node_seen (
    id      text COLLATE "C" PRIMARY KEY,
    seen_ms bigint NOT NULL,
    report  text NOT NULL
);

-- Jobs written by version 1 that are not done get an expired lease, so
-- that a gateway takes each: it resumes the unfinished ones and finishes
-- the cleanup of cancelled ones. `rec` is a format byte, then compact
-- JSON in which only the job's own `state` field has that name; it is
-- matched as bytes, so no key or name a tenant chose can fail the cast.
-- Stop every gateway of the old version before the first new one starts:
-- an old gateway commits without a fence.
INSERT INTO job_leases (job, tenant, owner, epoch, expires_ms)
    SELECT id, tenant, '', 0, 0 FROM jobs
    WHERE position('"state":"done"'::bytea IN rec) = 0;
