//! Following a job from the CLI: a progress line per phase (redrawn in
//! place on a terminal, fitted to its width; plain lines when they change
//! otherwise), with the time each phase spent preparing images, and each
//! failed task shown as soon as it is recorded, with the last lines of its
//! stderr.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::signed_client::SignedClient;

/// Bytes of a failed task's stderr read to show its last lines.
const STDERR_TAIL_BYTES: u64 = 4096;
/// Lines of it shown.
pub const STDERR_TAIL_LINES: usize = 5;

/// The last lines of a failed task's saved stderr (`error["stderr"]`).
pub async fn stderr_tail(client: &SignedClient, error: &Value) -> Vec<String> {
    let Some(loc) = error["stderr"].as_str() else {
        return Vec::new();
    };
    match client.object_tail(loc, STDERR_TAIL_BYTES).await {
        Ok((200 | 206, text)) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
            lines[from..].iter().map(|l| l.to_string()).collect()
        }
        _ => Vec::new(),
    }
}

/// One phase's figures, from a status's `phases[i]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PhaseFigures {
    kind: String,
    done: u64,
    failed: u64,
    running: u64,
    queued: u64,
    preparing: u64,
    total: u64,
}

impl PhaseFigures {
    fn of(p: &Value) -> Self {
        let t = &p["tasks"];
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        Self {
            kind: p["type"].as_str().unwrap_or("?").to_string(),
            done: n("done"),
            failed: n("failed"),
            running: n("running"),
            queued: n("queued"),
            preparing: n("preparing_image"),
            total: n("total"),
        }
    }
}

/// The text after a phase's bar: counts, then what is worth knowing, cut
/// to `width` characters.
fn phase_message(f: &PhaseFigures, image_time: Duration, width: usize) -> String {
    let mut m = format!(
        "{}/{} done, {} failed, {} running, {} queued",
        f.done, f.total, f.failed, f.running, f.queued
    );
    if f.preparing > 0 {
        m.push_str(&format!(", {} preparing the image", f.preparing));
    }
    if image_time >= Duration::from_millis(100) {
        m.push_str(&format!(", image {:.1} s", image_time.as_secs_f64()));
    }
    if m.chars().count() > width {
        m = m.chars().take(width.saturating_sub(1)).collect::<String>() + "…";
    }
    m
}

/// Why queued tasks wait, as the supervisor last saw it (the whole job's).
fn waiting_line(status: &Value) -> Option<String> {
    let mut parts = Vec::new();
    for (reason, text) in [
        ("tenant_share", "behind other tenants' share"),
        ("no_live_replica", "with no replica's node up"),
        ("node_busy", "for a free slot on their nodes"),
        ("catalog", "for the catalog"),
    ] {
        let count = status["waiting"][reason].as_u64().unwrap_or(0);
        if count > 0 {
            parts.push(format!("{count} waiting {text}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

pub struct Watch {
    /// On a terminal: one bar per phase, redrawn in place.
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    /// Off a terminal: the last line printed per phase.
    printed: HashMap<usize, String>,
    last_waiting: Option<String>,
    /// When each phase started waiting for an image, and the time so far.
    image_since: HashMap<usize, Instant>,
    image_time: HashMap<usize, Duration>,
    errors_shown: u64,
}

impl Watch {
    pub fn new(tty: bool) -> Self {
        Self {
            bars: tty.then(|| {
                (
                    MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                    Vec::new(),
                )
            }),
            printed: HashMap::new(),
            last_waiting: None,
            image_since: HashMap::new(),
            image_time: HashMap::new(),
            errors_shown: 0,
        }
    }

    /// A line above the bars (or a plain line).
    fn println(&self, line: &str) {
        match &self.bars {
            Some((mp, _)) => {
                let _ = mp.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn update(&mut self, status: &Value) {
        let phases = status["phases"].as_array().cloned().unwrap_or_default();
        let now = Instant::now();
        let width = terminal_width();
        for (i, p) in phases.iter().enumerate() {
            let f = PhaseFigures::of(p);
            match (f.preparing > 0, self.image_since.get(&i).copied()) {
                (true, None) => {
                    self.image_since.insert(i, now);
                }
                (false, Some(since)) => {
                    self.image_since.remove(&i);
                    *self.image_time.entry(i).or_default() += now - since;
                }
                _ => {}
            }
            let image_time = self.image_time.get(&i).copied().unwrap_or_default()
                + self
                    .image_since
                    .get(&i)
                    .map(|s| now - *s)
                    .unwrap_or_default();
            let prefix = format!("phase {i} {:<6}", f.kind);
            match &mut self.bars {
                Some((mp, bars)) => {
                    while bars.len() <= i {
                        let bar = mp.add(ProgressBar::new(0));
                        bar.set_style(
                            ProgressStyle::with_template("{prefix} [{bar:24}] {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("#>."),
                        );
                        bars.push(bar);
                    }
                    let bar = &bars[i];
                    bar.set_prefix(prefix.clone());
                    bar.set_length(f.total.max(1));
                    bar.set_position(f.done + f.failed);
                    // prefix, a space, the 26-column bar and a space
                    let room = width.saturating_sub(prefix.chars().count() + 28);
                    bar.set_message(phase_message(&f, image_time, room));
                }
                None => {
                    let line = format!("{prefix}: {}", phase_message(&f, image_time, usize::MAX));
                    if self.printed.get(&i) != Some(&line) {
                        eprintln!("{line}");
                        self.printed.insert(i, line);
                    }
                }
            }
        }
        let waiting = waiting_line(status);
        if waiting != self.last_waiting {
            if let Some(w) = &waiting {
                self.println(&format!("queued tasks: {w}"));
            }
            self.last_waiting = waiting;
        }
    }

    /// Shows the errors recorded since the last call, each with the last
    /// lines of its stderr.
    pub async fn show_new_errors(
        &mut self,
        client: &SignedClient,
        id: &str,
        status: &Value,
    ) -> Result<()> {
        let total = status["counters"]["errors"].as_u64().unwrap_or(0);
        if total <= self.errors_shown {
            return Ok(());
        }
        let mut errors = Vec::new();
        crate::job::for_each_page(
            client,
            &format!("/_insitu/v1/jobs/{id}/errors"),
            "errors",
            |e| {
                errors.push(e.clone());
                Ok(())
            },
        )
        .await?;
        for e in errors.iter().skip(self.errors_shown as usize) {
            let input = e["input"].as_str().unwrap_or("");
            self.println(&format!(
                "failed: task {} (phase {}{}): {}: {}",
                e["task"].as_str().unwrap_or("?"),
                e["phase"],
                if input.is_empty() {
                    String::new()
                } else {
                    format!(", input {input}")
                },
                e["code"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("")
            ));
            for line in stderr_tail(client, e).await {
                self.println(&format!("  | {line}"));
            }
        }
        self.errors_shown = errors.len() as u64;
        Ok(())
    }

    pub fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            for b in bars {
                b.finish();
            }
        }
    }
}

fn terminal_width() -> usize {
    console::Term::stderr()
        .size_checked()
        .map(|(_, w)| w as usize)
        .unwrap_or(120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_line_fits_its_room() {
        let f = PhaseFigures {
            kind: "map".into(),
            done: 120,
            failed: 3,
            running: 4,
            queued: 873,
            preparing: 2,
            total: 1000,
        };
        let full = phase_message(&f, Duration::from_millis(2500), usize::MAX);
        assert_eq!(
            full,
            "120/1000 done, 3 failed, 4 running, 873 queued, 2 preparing the image, image 2.5 s"
        );
        let cut = phase_message(&f, Duration::ZERO, 30);
        assert_eq!(cut.chars().count(), 30);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn figures_come_from_the_status_phase() {
        let p = serde_json::json!({"phase": 1, "type": "reduce",
            "tasks": {"done": 1, "failed": 0, "running": 2, "queued": 0, "preparing_image": 0, "total": 3}});
        let f = PhaseFigures::of(&p);
        assert_eq!(
            (f.kind.as_str(), f.done, f.running, f.total),
            ("reduce", 1, 2, 3)
        );
    }
}
