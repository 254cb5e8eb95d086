//! The job spec a tenant submits, parsed strictly and validated fully, so a
//! job that starts can run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::errors::SpecError;
use crate::limits::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    Map,
    Reduce,
}

/// How earlier outputs are routed to reducers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Whole outputs, by the hash of their name.
    #[default]
    Object,
    /// Line by line, by the hash of the first tab-separated field.
    Key,
}

/// Where a phase's image comes from: a local (or pullable) image name, or a
/// `docker save` tarball stored as an object (for air-gapped clusters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageRef {
    Name(String),
    Object { object: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    #[serde(rename = "type")]
    pub kind: PhaseKind,
    pub image: ImageRef,
    /// Run by `/bin/sh -c`, once per task.
    pub exec: String,
    /// Run once per container before its first task.
    #[serde(default)]
    pub init: Option<String>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub disk_mb: Option<u64>,
    /// Largest output (stdout, or any file) a task may write, MiB.
    #[serde(default)]
    pub output_mb: Option<u64>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Reducers (reduce phases only).
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub partition: Option<Partition>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `runc` or `runsc` (gVisor).
    #[serde(default)]
    pub runtime: Option<String>,
    /// `bucket/key` objects readable in every task of the phase at
    /// `/insitu/assets/<bucket>/<key>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assets: Vec<String>,
}

impl PhaseSpec {
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb.unwrap_or(DEFAULT_MEMORY_MB)
    }
    pub fn cpus(&self) -> f64 {
        self.cpus.unwrap_or(DEFAULT_CPUS)
    }
    pub fn disk_mb(&self) -> u64 {
        self.disk_mb.unwrap_or(DEFAULT_DISK_MB)
    }
    pub fn output_mb(&self) -> u64 {
        self.output_mb.unwrap_or(DEFAULT_OUTPUT_MB)
    }
    pub fn timeout_s(&self) -> u64 {
        self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)
    }
    pub fn reducers(&self) -> u32 {
        self.count.unwrap_or(1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub phases: Vec<PhaseSpec>,
    /// `bucket/key` inputs.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Every object under `bucket/prefix` is an input.
    #[serde(default)]
    pub input_prefix: Option<String>,
    /// Keep input open for `POST .../inputs` until `.../inputs/end`.
    #[serde(default)]
    pub input_open: bool,
    /// `bucket/prefix/` for the final outputs.
    pub output: String,
    /// Reuse the outputs of an earlier task of the tenant with the same
    /// fingerprint instead of running a map task of the last phase.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memoize: bool,
}

/// Splits `bucket/key` (or `bucket/prefix`), checking the bucket name shape.
pub fn split_location(
    field: &str,
    s: &str,
    allow_empty_key: bool,
) -> Result<(String, String), SpecError> {
    let s = s.strip_prefix("s3://").unwrap_or(s);
    let (bucket, key) = s
        .split_once('/')
        .ok_or_else(|| SpecError::new(field, format!("{s:?} must be bucket/key")))?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(SpecError::new(
            field,
            format!("{bucket:?} is not a valid bucket name"),
        ));
    }
    if key.is_empty() && !allow_empty_key {
        return Err(SpecError::new(field, format!("{s:?} names no key")));
    }
    if key.len() > 1024 {
        return Err(SpecError::new(field, "keys are at most 1024 bytes"));
    }
    Ok((bucket.to_string(), key.to_string()))
}

fn check_exec(field: &str, s: &str) -> Result<(), SpecError> {
    if s.trim().is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if s.len() > MAX_EXEC_BYTES {
        return Err(SpecError::new(
            field,
            format!("at most {MAX_EXEC_BYTES} bytes"),
        ));
    }
    if s.contains('\0') {
        return Err(SpecError::new(field, "must not contain NUL"));
    }
    Ok(())
}

/// An asset's key must map to a plain relative path: no empty, `.` or
/// `..` part, no part longer than a file name may be.
pub fn check_asset(field: &str, asset: &str) -> Result<(String, String), SpecError> {
    let (bucket, key) = split_location(field, asset, false)?;
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(SpecError::new(
                field,
                format!("{key:?} must be a path of non-empty parts without . or .."),
            ));
        }
        if part.len() > MAX_ASSET_NAME_PART {
            return Err(SpecError::new(
                field,
                format!("each /-separated part of {key:?} is at most {MAX_ASSET_NAME_PART} bytes"),
            ));
        }
        if part.contains('\0') {
            return Err(SpecError::new(field, "must not contain NUL"));
        }
    }
    Ok((bucket, key))
}

fn check_image(field: &str, image: &ImageRef) -> Result<(), SpecError> {
    match image {
        ImageRef::Name(n) => {
            let ok = !n.is_empty()
                && n.len() <= 255
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
                && !n.starts_with(['-', '.', '/', ':']);
            if !ok {
                return Err(SpecError::new(
                    field,
                    format!("{n:?} is not a valid image reference"),
                ));
            }
            // A bare image id names whatever a node holds, including an
            // image another tenant loaded from an object.
            if n.starts_with("insitu-loaded/") {
                return Err(SpecError::new(
                    field,
                    "insitu-loaded/ names images loaded from objects; give the object",
                ));
            }
            let bare_id = n.starts_with("sha256:")
                || (n.len() >= 12 && n.bytes().all(|b| b.is_ascii_hexdigit()));
            if bare_id {
                return Err(SpecError::new(
                    field,
                    "name an image by repository and tag or digest, not by its id",
                ));
            }
        }
        ImageRef::Object { object } => {
            split_location(&format!("{field}.object"), object, false)?;
        }
    }
    Ok(())
}

impl JobSpec {
    /// Parses and validates a spec from JSON.
    pub fn parse(json: &[u8]) -> Result<Self, SpecError> {
        let spec: JobSpec =
            serde_json::from_slice(json).map_err(|e| SpecError::new("spec", e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name {
            if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
                return Err(SpecError::new(
                    "name",
                    format!("at most {MAX_NAME_BYTES} bytes, no control characters"),
                ));
            }
        }
        if self.phases.is_empty() {
            return Err(SpecError::new("phases", "a job needs at least one phase"));
        }
        if self.phases.len() > MAX_PHASES {
            return Err(SpecError::new(
                "phases",
                format!("at most {MAX_PHASES} phases"),
            ));
        }
        for (i, p) in self.phases.iter().enumerate() {
            let f = |name: &str| format!("phases[{i}].{name}");
            check_image(&f("image"), &p.image)?;
            check_exec(&f("exec"), &p.exec)?;
            if let Some(init) = &p.init {
                check_exec(&f("init"), init)?;
            }
            if let Some(m) = p.memory_mb {
                if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&m) {
                    return Err(SpecError::new(
                        f("memory_mb"),
                        format!("must be {MIN_MEMORY_MB}..={MAX_MEMORY_MB}"),
                    ));
                }
            }
            if let Some(c) = p.cpus {
                if !(MIN_CPUS..=MAX_CPUS).contains(&c) || c.is_nan() {
                    return Err(SpecError::new(
                        f("cpus"),
                        format!("must be {MIN_CPUS}..={MAX_CPUS}"),
                    ));
                }
            }
            if let Some(d) = p.disk_mb {
                if d == 0 || d > MAX_DISK_MB {
                    return Err(SpecError::new(
                        f("disk_mb"),
                        format!("must be 1..={MAX_DISK_MB}"),
                    ));
                }
            }
            if let Some(o) = p.output_mb {
                if o == 0 || o > MAX_OUTPUT_MB {
                    return Err(SpecError::new(
                        f("output_mb"),
                        format!("must be 1..={MAX_OUTPUT_MB}"),
                    ));
                }
            }
            if let Some(t) = p.timeout_s {
                if t == 0 || t > MAX_TIMEOUT_S {
                    return Err(SpecError::new(
                        f("timeout_s"),
                        format!("must be 1..={MAX_TIMEOUT_S}"),
                    ));
                }
            }
            match p.kind {
                PhaseKind::Map => {
                    if p.count.is_some() {
                        return Err(SpecError::new(
                            f("count"),
                            "only reduce phases have a reducer count",
                        ));
                    }
                    if p.partition.is_some() {
                        return Err(SpecError::new(
                            f("partition"),
                            "only reduce phases are partitioned",
                        ));
                    }
                }
                PhaseKind::Reduce => {
                    if let Some(c) = p.count {
                        if c == 0 || c > MAX_REDUCERS {
                            return Err(SpecError::new(
                                f("count"),
                                format!("must be 1..={MAX_REDUCERS}"),
                            ));
                        }
                    }
                }
            }
            if p.env.len() > MAX_ENV_VARS {
                return Err(SpecError::new(
                    f("env"),
                    format!("at most {MAX_ENV_VARS} variables"),
                ));
            }
            let mut env_bytes = 0;
            for (k, v) in &p.env {
                let name_ok = !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !k.as_bytes()[0].is_ascii_digit();
                if !name_ok {
                    return Err(SpecError::new(
                        f("env"),
                        format!("{k:?} is not a valid variable name"),
                    ));
                }
                if k.starts_with("INSITU_") {
                    return Err(SpecError::new(
                        f("env"),
                        format!("{k} is reserved for insitu"),
                    ));
                }
                if v.contains('\0') {
                    return Err(SpecError::new(f("env"), format!("{k} contains NUL")));
                }
                env_bytes += k.len() + v.len();
            }
            if env_bytes > MAX_ENV_BYTES {
                return Err(SpecError::new(
                    f("env"),
                    format!("at most {MAX_ENV_BYTES} bytes in all"),
                ));
            }
            if let Some(r) = &p.runtime {
                if r != "runc" && r != "runsc" {
                    return Err(SpecError::new(f("runtime"), "must be runc or runsc"));
                }
            }
            if p.assets.len() > MAX_ASSETS {
                return Err(SpecError::new(
                    f("assets"),
                    format!("at most {MAX_ASSETS} assets per phase"),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for (j, asset) in p.assets.iter().enumerate() {
                let (bucket, key) = check_asset(&f(&format!("assets[{j}]")), asset)?;
                // One path each; and no asset may be a directory of another.
                let path = format!("{bucket}/{key}");
                let clash = seen.iter().any(|other: &String| {
                    other == &path
                        || other.starts_with(&format!("{path}/"))
                        || path.starts_with(&format!("{other}/"))
                });
                if clash {
                    return Err(SpecError::new(
                        f(&format!("assets[{j}]")),
                        format!("{path:?} is given twice, or is a directory of another asset"),
                    ));
                }
                seen.insert(path);
            }
        }
        if self.inputs.len() > MAX_INLINE_INPUTS {
            return Err(SpecError::new(
                "inputs",
                format!("at most {MAX_INLINE_INPUTS} here; add more with POST .../inputs"),
            ));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            split_location(&format!("inputs[{i}]"), input, false)?;
        }
        if let Some(prefix) = &self.input_prefix {
            split_location("input_prefix", prefix, true)?;
        }
        if self.inputs.is_empty() && self.input_prefix.is_none() && !self.input_open {
            return Err(SpecError::new(
                "inputs",
                "give inputs, an input_prefix, or input_open: true",
            ));
        }
        let (_, out_prefix) = split_location("output", &self.output, true)?;
        if out_prefix.starts_with("_insitu/") {
            return Err(SpecError::new(
                "output",
                "_insitu/ is where jobs keep their own objects",
            ));
        }
        if let Some(first) = self.phases.first() {
            if first.kind == PhaseKind::Reduce && first.partition == Some(Partition::Key) {
                return Err(SpecError::new(
                    "phases[0].partition",
                    "key partitioning splits an earlier phase's output; a first reduce phase gets whole inputs",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDCOUNT: &str = r#"{ "name": "wordcount",
      "phases": [
        { "type": "map", "image": "insitu-test/busybox:latest",
          "exec": "tr -cs 'A-Za-z' '\\n' | grep -v '^$' | sort | uniq -c" },
        { "type": "reduce", "image": "insitu-test/busybox:latest", "count": 1,
          "exec": "awk '{c[$2]+=$1} END {for (w in c) print w, c[w]}' | sort" } ],
      "inputs": ["corpus/books/a.txt", "corpus/books/b.txt"],
      "output": "results/wordcount/" }"#;

    #[test]
    fn the_briefs_wordcount_spec_is_valid() {
        let spec = JobSpec::parse(WORDCOUNT.as_bytes()).unwrap();
        assert_eq!(spec.phases.len(), 2);
        assert_eq!(spec.phases[1].reducers(), 1);
        assert_eq!(spec.phases[0].timeout_s(), DEFAULT_TIMEOUT_S);
    }

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<JobSpec, SpecError> {
        let mut v: serde_json::Value = serde_json::from_str(WORDCOUNT).unwrap();
        edit(&mut v);
        JobSpec::parse(v.to_string().as_bytes())
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let field = |r: Result<JobSpec, SpecError>| r.unwrap_err().field;
        assert_eq!(
            field(with(|v| v["phases"] = serde_json::json!([]))),
            "phases"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["exec"] = "  ".into())),
            "phases[0].exec"
        );
        for id in ["sha256:0123456789abcdef", "0123456789abcdef0123"] {
            assert_eq!(
                field(with(|v| v["phases"][0]["image"] = id.into())),
                "phases[0].image"
            );
        }
        assert_eq!(
            field(with(|v| v["output"] = "bucket/_insitu/x/".into())),
            "output"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["count"] = 2.into())),
            "phases[0].count"
        );
        assert_eq!(
            field(with(|v| v["phases"][1]["count"] = 0.into())),
            "phases[1].count"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["memory_mb"] = 1.into())),
            "phases[0].memory_mb"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["timeout_s"] = 0.into())),
            "phases[0].timeout_s"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["cpus"] = 100.0.into())),
            "phases[0].cpus"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["image"] = "-bad".into())),
            "phases[0].image"
        );
        assert_eq!(
            field(with(
                |v| v["phases"][0]["env"] = serde_json::json!({"INSITU_JOB_ID": "x"})
            )),
            "phases[0].env"
        );
        assert_eq!(
            field(with(
                |v| v["phases"][0]["env"] = serde_json::json!({"1X": "x"})
            )),
            "phases[0].env"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["runtime"] = "kata".into())),
            "phases[0].runtime"
        );
        assert_eq!(
            field(with(|v| v["inputs"] = serde_json::json!(["nokey"]))),
            "inputs[0]"
        );
        assert_eq!(
            field(with(|v| v["inputs"] = serde_json::json!(["Bad_Bucket/k"]))),
            "inputs[0]"
        );
        assert_eq!(field(with(|v| v["output"] = "x".into())), "output");
        assert_eq!(
            field(with(|v| {
                v["inputs"] = serde_json::json!([]);
            })),
            "inputs"
        );
        // Unknown fields are refused, not ignored.
        assert_eq!(
            field(with(|v| v["phases"][0]["memroy_mb"] = 5.into())),
            "spec"
        );
        assert_eq!(
            field(with(|v| v["phases"][0]["type"] = "shuffle".into())),
            "spec"
        );
    }

    #[test]
    fn images_may_be_objects_and_prefixes_may_replace_lists() {
        let spec = with(|v| {
            v["phases"][0]["image"] = serde_json::json!({"object": "tools/images/tool.tar"});
            v["inputs"] = serde_json::json!([]);
            v["input_prefix"] = "corpus/books/".into();
            v["phases"][1]["partition"] = "key".into();
            v["phases"][1]["count"] = 3.into();
        })
        .unwrap();
        assert_eq!(
            spec.phases[0].image,
            ImageRef::Object {
                object: "tools/images/tool.tar".into()
            }
        );
        assert_eq!(spec.phases[1].partition, Some(Partition::Key));
        assert!(
            with(|v| v["phases"][0]["image"] = serde_json::json!({"object": "nokey"})).is_err()
        );
    }

    #[test]
    fn assets_are_plain_paths_given_once() {
        let assets = |list: serde_json::Value| with(|v| v["phases"][0]["assets"] = list);
        let ok = assets(serde_json::json!([
            "tables/geo/cities.tsv",
            "s3://models/m.bin"
        ]))
        .unwrap();
        assert_eq!(ok.phases[0].assets.len(), 2);
        for bad in [
            serde_json::json!(["tables/../etc/passwd"]),
            serde_json::json!(["tables/a//b"]),
            serde_json::json!(["tables/./a"]),
            serde_json::json!(["tables/dir/"]),
            serde_json::json!(["tables"]),
            serde_json::json!(["tables/a", "tables/a"]),
            serde_json::json!(["tables/a", "tables/a/b"]),
            serde_json::json!([format!("tables/{}", "x".repeat(256))]),
            serde_json::json!(vec!["tables/a"; MAX_ASSETS + 1]),
        ] {
            let field = assets(bad.clone()).unwrap_err().field;
            assert!(field.starts_with("phases[0].assets"), "{bad}: {field}");
        }
    }
}

/// The job spec parser as the fuzz target (`fuzz/`) runs it, on stable
/// Rust in CI: any bytes are a spec or a `SpecError`, never a panic.
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;

    const SPEC: &str = r#"{"name":"wc","phases":[{"type":"map","image":"busybox","exec":"wc -l","memory_mb":64,"env":{"A":"1"}},{"type":"reduce","image":{"object":"b/i.tar"},"count":3,"partition":"key","exec":"sort"}],"inputs":["b/k"],"input_prefix":"b/p/","output":"b/o/","memoize":true}"#;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn mutated_specs_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let mut b = SPEC.as_bytes().to_vec();
            for (at, v) in edits {
                let i = at % b.len();
                b[i] = v;
            }
            if let Some(c) = cut {
                b.truncate(c % (b.len() + 1));
            }
            let _ = JobSpec::parse(&b);
        }

        #[test]
        fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = JobSpec::parse(&b);
        }
    }
}
