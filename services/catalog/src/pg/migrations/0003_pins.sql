-- insitu catalog schema, version 3: blobs pinned by jobs (an input's
-- version, or an object a task referenced). Garbage collection leaves a
-- pinned blob until the job's lease is released at its end.

CREATE TABLE job_pins (
    blob_id text COLLATE "C" NOT NULL,
    job     text COLLATE "C" NOT NULL,
    rec     bytea NOT NULL,
    PRIMARY KEY (blob_id, job)
);
CREATE INDEX job_pins_by_job ON job_pins (job);
