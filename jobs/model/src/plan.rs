//! Planning decisions, kept pure so they can be tested on their own: where
//! a task runs, which reducer an output or a line goes to, and what the
//! objects a job writes are called.

use crate::spec::{split_location, JobSpec, PhaseKind};

/// FNV-1a, 64-bit: a stable hash (the same in every process and release),
/// which routing needs, since a restarted gateway must route as before.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The reducer (of `count`) that a whole output, by name, goes to.
pub fn reducer_for_name(name: &str, count: u32) -> u32 {
    (stable_hash(name.as_bytes()) % u64::from(count.max(1))) as u32
}

/// The reducer (of `count`) that a line goes to with `"partition": "key"`:
/// by the hash of its first tab-separated field (the whole line, without
/// its newline, when it has no tab).
pub fn reducer_for_line(line: &[u8], count: u32) -> u32 {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let key = match line.iter().position(|b| *b == b'\t') {
        Some(i) => &line[..i],
        None => line,
    };
    (stable_hash(key) % u64::from(count.max(1))) as u32
}

/// Chooses the node a task runs on among `holders` (the up nodes holding
/// its input, never one in `exclude`): the least loaded, ties broken by
/// the order given. `load` returns a node's tasks in flight, and `slots`
/// caps them; `None` when every candidate is full (or there is none).
pub fn choose_node(
    holders: &[String],
    exclude: &[String],
    load: impl Fn(&str) -> u32,
    slots: u32,
) -> Option<String> {
    holders
        .iter()
        .filter(|n| !exclude.contains(n))
        .map(|n| (load(n), n))
        .filter(|(l, _)| *l < slots)
        .min_by_key(|(l, _)| *l)
        .map(|(_, n)| n.clone())
}

/// Whether a tenant with `mine` tasks running may start one more: never
/// at its `cap` (0: no cap), and, while another tenant waits for a slot,
/// only under an even share of the `total` slots between the `sharing`
/// tenants that run or wait (itself included). So a big job cannot
/// starve a small one, and an idle cluster is all one tenant's.
pub fn fair_share_allows(
    mine: u32,
    cap: u32,
    total: u32,
    others_waiting: bool,
    sharing: usize,
) -> bool {
    if cap > 0 && mine >= cap {
        return false;
    }
    if !others_waiting {
        return true;
    }
    mine < total.div_ceil(sharing.max(1) as u32).max(1)
}

/// A new job id: time-ordered (so listings run oldest first) and unique.
pub fn new_job_id(now_ms: i64, random: u32) -> String {
    format!("{:011x}{:08x}", now_ms.max(0), random)
}

/// Task ids: `m<seq>` for map tasks, `r<phase>-<reducer>` for reducers.
pub fn map_task_id(seq: u64) -> String {
    format!("m{seq:08}")
}

/// The sequence number a map task id was made from.
pub fn map_task_seq(id: &str) -> Option<u64> {
    id.strip_prefix('m')?.parse().ok()
}

pub fn reducer_task_id(phase: u32, reducer: u32) -> String {
    format!("r{phase}-{reducer}")
}

/// Where a job writes: the output bucket and prefix from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlace {
    pub bucket: String,
    pub prefix: String,
}

impl OutputPlace {
    pub fn of(spec: &JobSpec) -> Self {
        let (bucket, prefix) = split_location("output", &spec.output, true).unwrap_or_default();
        Self { bucket, prefix }
    }

    /// The job's own prefix in the output bucket: intermediate outputs
    /// and saved stderr live under it.
    pub fn job_prefix(job: &str) -> String {
        format!("_insitu/jobs/{job}/")
    }

    /// The object a task's stdout becomes. Final-phase outputs go under the
    /// output prefix: a map task's named after its input (`bucket/key`),
    /// a reducer's `reduce.<N>`. Earlier phases' outputs are intermediate.
    pub fn output_key(
        &self,
        job: &str,
        phase: u32,
        last_phase: bool,
        task: &str,
        input: Option<&str>,
        reducer: Option<u32>,
    ) -> String {
        if last_phase {
            match (phase, input, reducer) {
                (_, _, Some(r)) => format!("{}reduce.{r}", self.prefix),
                (0, Some(input), None) => format!("{}{input}", self.prefix),
                _ => format!("{}p{phase}/{task}", self.prefix),
            }
        } else {
            format!("{}p{phase}/{task}", Self::job_prefix(job))
        }
    }

    /// A task's named output `name`: under the output prefix in the last
    /// phase (as the task wrote it), under the job's own prefix otherwise.
    pub fn named_output_key(
        &self,
        job: &str,
        phase: u32,
        last_phase: bool,
        task: &str,
        name: &str,
    ) -> String {
        match last_phase {
            true => format!("{}{name}", self.prefix),
            false => format!("{}p{phase}/{task}.o/{name}", Self::job_prefix(job)),
        }
    }

    /// Why a task may not write the named output `name` under `prefix`
    /// (checked by the node, where the task writes it): its name's shape,
    /// the key's length, or the jobs' own `_insitu/` objects (an empty
    /// output prefix would otherwise reach them).
    pub fn named_output_refusal(prefix: &str, name: &str) -> Option<String> {
        let max = crate::limits::MAX_OUTPUT_NAME_BYTES;
        if name.is_empty() || name.len() > max || name.chars().any(char::is_control) {
            return Some(format!(
                "an output's name (the key after {prefix:?}) is 1 to {max} bytes, without control characters"
            ));
        }
        if prefix.len() + name.len() > 1024 {
            return Some("keys are at most 1024 bytes".to_string());
        }
        if format!("{prefix}{name}").starts_with("_insitu/") {
            return Some("_insitu/ is where jobs keep their own objects".to_string());
        }
        None
    }

    /// A piece of a split map output, bound for reducer `r`.
    pub fn piece_key(job: &str, phase: u32, task: &str, r: u32) -> String {
        format!("{}p{phase}/{task}.r{r}", Self::job_prefix(job))
    }

    pub fn stderr_key(job: &str, task: &str, attempt: u32) -> String {
        format!("{}stderr/{task}.{attempt}", Self::job_prefix(job))
    }
}

/// How outputs of phase `phase` feed the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// Final outputs.
    None,
    /// Each output becomes a map task of the next phase.
    Map,
    /// Whole outputs go to reducer `hash(name) % count`.
    ReduceByName { count: u32 },
    /// Outputs are split line by line over `count` reducers.
    ReduceByKey { count: u32 },
}

pub fn downstream(spec: &JobSpec, phase: usize) -> Downstream {
    match spec.phases.get(phase + 1) {
        None => Downstream::None,
        Some(next) if next.kind == PhaseKind::Map => Downstream::Map,
        Some(next) => {
            let count = next.reducers();
            if next.partition == Some(crate::spec::Partition::Key) && count > 1 {
                Downstream::ReduceByKey { count }
            } else {
                Downstream::ReduceByName { count }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_outputs_stay_out_of_the_jobs_own_objects() {
        assert!(OutputPlace::named_output_refusal("out/", "a/b.txt").is_none());
        assert!(OutputPlace::named_output_refusal("", "_insitu/jobs/x/p0/m1").is_some());
        assert!(OutputPlace::named_output_refusal("_insi", "tu/jobs/x").is_some());
        assert!(OutputPlace::named_output_refusal("out/", "").is_some());
        assert!(OutputPlace::named_output_refusal("out/", "a\nb").is_some());
        assert!(OutputPlace::named_output_refusal(&"p".repeat(600), &"n".repeat(500)).is_some());
    }

    #[test]
    fn lines_route_by_their_first_field() {
        let a = reducer_for_line(b"apple\t3\n", 7);
        assert_eq!(a, reducer_for_line(b"apple\t99", 7));
        assert_eq!(a, reducer_for_line(b"apple", 7));
        let spread: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| reducer_for_line(format!("w{i}\t1").as_bytes(), 3))
            .collect();
        assert_eq!(spread.len(), 3);
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn the_least_loaded_holder_with_a_free_slot_wins() {
        let holders = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let load = |n: &str| match n {
            "a" => 2,
            "b" => 1,
            _ => 4,
        };
        assert_eq!(choose_node(&holders, &[], load, 4).as_deref(), Some("b"));
        assert_eq!(
            choose_node(&holders, &["b".to_string()], load, 4).as_deref(),
            Some("a")
        );
        assert_eq!(choose_node(&holders, &[], load, 1), None);
        assert_eq!(choose_node(&[], &[], load, 4), None);
    }

    #[test]
    fn outputs_are_named_after_their_inputs() {
        let spec = JobSpec::parse(
            br#"{"phases":[{"type":"map","image":"i","exec":"cat"},
                {"type":"reduce","image":"i","exec":"cat","count":3,"partition":"key"}],
                "inputs":["bkt/k"],"output":"outb/res/"}"#,
        )
        .unwrap();
        let o = OutputPlace::of(&spec);
        assert_eq!(o.bucket, "outb");
        assert_eq!(
            o.output_key("j", 0, false, "m1", Some("b/k"), None),
            "_insitu/jobs/j/p0/m1"
        );
        assert_eq!(
            o.output_key("j", 1, true, "r1-2", None, Some(2)),
            "res/reduce.2"
        );
        assert_eq!(
            o.output_key("j", 0, true, "m1", Some("bkt/k"), None),
            "res/bkt/k"
        );
        assert_eq!(downstream(&spec, 0), Downstream::ReduceByKey { count: 3 });
        assert_eq!(downstream(&spec, 1), Downstream::None);
    }
}
