//! Tenant policies: checking one an operator sets, and applying it to a
//! submitted spec.

use insitu_job_model::JobSpec;

use crate::error::*;

/// Creates a job, durably, and starts driving it.
/// Checks a tenant policy an operator sets.
pub fn check_policy(p: &insitu_catalog::TenantPolicy) -> Result<(), String> {
    if let Some(r) = &p.runtime {
        if r != "runc" && r != "runsc" {
            return Err("runtime must be runc or runsc".into());
        }
    }
    let positive = [
        ("max_memory_mb", p.max_memory_mb),
        ("max_disk_mb", p.max_disk_mb),
        ("max_timeout_s", p.max_timeout_s),
        ("max_output_mb", p.max_output_mb),
        ("default_memory_mb", p.default_memory_mb),
        ("default_disk_mb", p.default_disk_mb),
        ("default_timeout_s", p.default_timeout_s),
        ("default_output_mb", p.default_output_mb),
    ];
    for (name, v) in positive {
        if v == Some(0) {
            return Err(format!("{name} must be at least 1"));
        }
    }
    for (name, v) in [("max_cpus", p.max_cpus), ("default_cpus", p.default_cpus)] {
        if v.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return Err(format!("{name} must be positive"));
        }
    }
    // A default must itself be valid as a phase's value, and within the
    // tenant's maximum.
    let probe = insitu_job_model::PhaseSpec {
        kind: insitu_job_model::PhaseKind::Map,
        image: insitu_job_model::ImageRef::Name("probe".into()),
        exec: "true".into(),
        init: None,
        memory_mb: p.default_memory_mb,
        cpus: p.default_cpus,
        disk_mb: p.default_disk_mb,
        output_mb: p.default_output_mb,
        timeout_s: p.default_timeout_s,
        count: None,
        partition: None,
        env: Default::default(),
        runtime: None,
        assets: Vec::new(),
    };
    let mut spec = JobSpec {
        name: None,
        phases: vec![probe],
        inputs: vec!["probe/probe".into()],
        input_prefix: None,
        input_open: false,
        output: "probe/out/".into(),
        memoize: false,
    };
    spec.validate()
        .map_err(|e| format!("defaults: {}", e.message))?;
    apply_policy(&mut spec, p).map_err(|e| format!("defaults: {e}"))?;
    Ok(())
}

/// The most one task may ask for where its tenant's policy sets no
/// maximum (`insitu gateway --task-max-*`). Modest by default: scratch
/// space and outputs fill the nodes' disks, and memory their RAM. An
/// operator's tenant policy may set more, up to the limits of the spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskMaxima {
    pub memory_mb: u64,
    pub cpus: f64,
    pub disk_mb: u64,
    pub output_mb: u64,
}

impl Default for TaskMaxima {
    fn default() -> Self {
        Self {
            memory_mb: 4 * 1024,
            cpus: 4.0,
            disk_mb: 10 * 1024,
            output_mb: 10 * 1024,
        }
    }
}

impl TaskMaxima {
    /// The policy a tenant's jobs run under: its own, with these maxima
    /// where it sets none.
    pub(crate) fn under(&self, p: &insitu_catalog::TenantPolicy) -> insitu_catalog::TenantPolicy {
        let mut p = p.clone();
        p.max_memory_mb = p.max_memory_mb.or(Some(self.memory_mb));
        p.max_cpus = p.max_cpus.or(Some(self.cpus));
        p.max_disk_mb = p.max_disk_mb.or(Some(self.disk_mb));
        p.max_output_mb = p.max_output_mb.or(Some(self.output_mb));
        p
    }
}

/// Applies the tenant's policy to a spec: a value beyond a maximum is
/// refused, an omitted one is held to it, and a `runsc` policy puts every
/// phase under gVisor.
pub(crate) fn apply_policy(
    spec: &mut JobSpec,
    p: &insitu_catalog::TenantPolicy,
) -> Result<(), JobError> {
    fn cap<T: PartialOrd + Copy + std::fmt::Display>(
        field: String,
        given: &mut Option<T>,
        default: T,
        max: Option<T>,
    ) -> Result<(), JobError> {
        let Some(max) = max else { return Ok(()) };
        match *given {
            Some(v) if v > max => Err(JobError::Invalid(format!(
                "{field}: at most {max} for this tenant"
            ))),
            Some(_) => Ok(()),
            None if default > max => {
                *given = Some(max);
                Ok(())
            }
            None => Ok(()),
        }
    }
    use insitu_job_model::limits::*;
    for (i, phase) in spec.phases.iter_mut().enumerate() {
        let f = |n: &str| format!("phases[{i}].{n}");
        phase.memory_mb = phase.memory_mb.or(p.default_memory_mb);
        phase.cpus = phase.cpus.or(p.default_cpus);
        phase.disk_mb = phase.disk_mb.or(p.default_disk_mb);
        phase.timeout_s = phase.timeout_s.or(p.default_timeout_s);
        phase.output_mb = phase.output_mb.or(p.default_output_mb);
        cap(
            f("memory_mb"),
            &mut phase.memory_mb,
            DEFAULT_MEMORY_MB,
            p.max_memory_mb,
        )?;
        cap(f("cpus"), &mut phase.cpus, DEFAULT_CPUS, p.max_cpus)?;
        cap(
            f("disk_mb"),
            &mut phase.disk_mb,
            DEFAULT_DISK_MB,
            p.max_disk_mb,
        )?;
        cap(
            f("timeout_s"),
            &mut phase.timeout_s,
            DEFAULT_TIMEOUT_S,
            p.max_timeout_s,
        )?;
        cap(
            f("output_mb"),
            &mut phase.output_mb,
            DEFAULT_OUTPUT_MB,
            p.max_output_mb,
        )?;
        if p.runtime.as_deref() == Some("runsc") {
            if phase.runtime.as_deref() == Some("runc") {
                return Err(JobError::Invalid(format!(
                    "{}: this tenant's tasks run under runsc",
                    f("runtime")
                )));
            }
            phase.runtime = Some("runsc".into());
        }
    }
    Ok(())
}
