//! The placement and fair-share planner run by itself, in a simulation
//! (`benches/run-plansim.sh`): 1,000,000 map tasks of 5 tenants over 100
//! nodes with 4 task slots each, every input on 3 nodes chosen with a
//! skew (a few nodes hold far more replicas than the rest). It compares
//! local-only placement (a task runs only on a node holding its input,
//! and waits for one to have a free slot: the dispatcher's policy until
//! it kept delay scheduling, and still its policy with a
//! `--locality-wait-ms` longer than its jobs) with delay scheduling
//! (Zaharia et al., EuroSys 2010: a tenant waits up to D for a local slot,
//! then takes a remote one; the dispatcher's policy now), and reports the fraction of tasks run on a
//! node holding their input, the slot utilisation, each tenant's share of
//! the slots while all five compete against its fair share, and the
//! planning time per task.
//!
//! The model: tasks take 10 ms when their input is local and 15 ms when
//! it is read from another node. Each tenant's job keeps a window of its
//! first 256 queued tasks, as the dispatcher does. When a slot frees, the
//! tenants are offered it in order of fewest running tasks, each only
//! under its fair share (`insitu_job_model::plan::fair_share_allows`, the
//! dispatcher's own rule); a tenant takes a task of its window whose input
//! the node holds, or, past its delay, the first of its window.
//!
//! `plansim [TASKS]` (default 1,000,000) prints JSON.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use insitu_job_model::plan::fair_share_allows;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const NODES: usize = 100;
const SLOTS: u32 = 4;
const REPLICAS: usize = 3;
const TENANTS: usize = 5;
/// Each tenant's part of the tasks.
const TENANT_WEIGHTS: [f64; TENANTS] = [0.4, 0.25, 0.15, 0.12, 0.08];
/// The dispatcher's window of queued tasks per job.
const WINDOW: usize = 256;
const LOCAL_US: u64 = 10_000;
const REMOTE_US: u64 = 15_000;
/// Zipf-like skew of replica placement: node i is chosen with weight
/// 1 / (i + 1)^SKEW.
const SKEW: f64 = 0.8;

struct Task {
    tenant: usize,
    holders: [u16; REPLICAS],
}

/// One tenant's job: its queue, the window the dispatcher sees, and which
/// window tasks each node holds.
struct Job {
    queue: Vec<u32>,
    next: usize,
    window: Vec<u32>,
    by_node: Vec<Vec<u32>>,
    running: u32,
    left: usize,
    /// When it last launched a task, for its delay.
    last_launch: u64,
}

struct Sim<'a> {
    tasks: &'a [Task],
    jobs: Vec<Job>,
    started: Vec<bool>,
    free: Vec<u32>,
    delay_us: Option<u64>,
    local: u64,
    remote: u64,
    busy_us: u64,
    /// Slot-microseconds each tenant held while all had work left, and
    /// the length of that time.
    contended_us: Vec<u64>,
    contended_span: u64,
    /// Nodes holding inputs that just entered a window: they look again.
    dirty: Vec<usize>,
}

impl Sim<'_> {
    fn refill(&mut self, t: usize) {
        let job = &mut self.jobs[t];
        while job.window.len() < WINDOW && job.next < job.queue.len() {
            let id = job.queue[job.next];
            job.next += 1;
            job.window.push(id);
            for h in self.tasks[id as usize].holders {
                job.by_node[h as usize].push(id);
                self.dirty.push(h as usize);
            }
        }
    }

    /// A task of tenant `t`'s window whose input `node` holds.
    fn local_task(&mut self, t: usize, node: usize) -> Option<u32> {
        let list = &mut self.jobs[t].by_node[node];
        while let Some(&id) = list.last() {
            if self.started[id as usize] {
                list.pop();
            } else {
                return Some(id);
            }
        }
        None
    }

    fn start(&mut self, t: usize, id: u32, node: usize, now: u64) -> u64 {
        self.started[id as usize] = true;
        let job = &mut self.jobs[t];
        job.window.retain(|&w| w != id);
        job.running += 1;
        job.left -= 1;
        job.last_launch = now;
        self.free[node] -= 1;
        let local = self.tasks[id as usize].holders.contains(&(node as u16));
        let took = if local { LOCAL_US } else { REMOTE_US };
        if local {
            self.local += 1;
        } else {
            self.remote += 1;
        }
        self.busy_us += took;
        self.refill(t);
        took
    }

    /// Fills `node`'s free slots; returns the tasks started (tenant, end
    /// time) and whether a slot was left free for want of a local task.
    fn fill(&mut self, node: usize, now: u64) -> (Vec<(usize, u64)>, bool) {
        let mut started = Vec::new();
        let mut waited = false;
        while self.free[node] > 0 {
            let sharing = self
                .jobs
                .iter()
                .filter(|j| j.left > 0 || j.running > 0)
                .count();
            let mut order: Vec<usize> = (0..TENANTS).filter(|&t| self.jobs[t].left > 0).collect();
            order.sort_by_key(|&t| self.jobs[t].running);
            let mut took = None;
            for &t in &order {
                let others_waiting = order.iter().any(|&o| o != t);
                let total = NODES as u32 * SLOTS;
                if !fair_share_allows(self.jobs[t].running, 0, total, others_waiting, sharing) {
                    continue;
                }
                if let Some(id) = self.local_task(t, node) {
                    took = Some((t, id));
                    break;
                }
                let past_delay = self
                    .delay_us
                    .is_some_and(|d| now.saturating_sub(self.jobs[t].last_launch) >= d);
                if past_delay {
                    if let Some(&id) = self.jobs[t].window.first() {
                        took = Some((t, id));
                        break;
                    }
                }
                waited = true;
            }
            let Some((t, id)) = took else { break };
            let end = now + self.start(t, id, node, now);
            started.push((t, end));
        }
        (started, waited)
    }
}

/// Chooses `REPLICAS` distinct nodes with the skew.
fn place(rng: &mut StdRng, cumulative: &[f64]) -> [u16; REPLICAS] {
    let total = cumulative[NODES - 1];
    let mut out = [u16::MAX; REPLICAS];
    let mut n = 0;
    while n < REPLICAS {
        let x = rng.gen::<f64>() * total;
        let node = cumulative.partition_point(|&c| c < x).min(NODES - 1) as u16;
        if !out[..n].contains(&node) {
            out[n] = node;
            n += 1;
        }
    }
    out
}

fn run(tasks: &[Task], delay_us: Option<u64>) -> Value {
    let mut jobs: Vec<Job> = (0..TENANTS)
        .map(|_| Job {
            queue: Vec::new(),
            next: 0,
            window: Vec::new(),
            by_node: vec![Vec::new(); NODES],
            running: 0,
            left: 0,
            last_launch: 0,
        })
        .collect();
    for (i, t) in tasks.iter().enumerate() {
        jobs[t.tenant].queue.push(i as u32);
        jobs[t.tenant].left += 1;
    }
    let mut sim = Sim {
        tasks,
        jobs,
        started: vec![false; tasks.len()],
        free: vec![SLOTS; NODES],
        delay_us,
        local: 0,
        remote: 0,
        busy_us: 0,
        contended_us: vec![0; TENANTS],
        contended_span: 0,
        dirty: Vec::new(),
    };
    for t in 0..TENANTS {
        sim.refill(t);
    }
    // (time, kind, node, tenant): kind 0 a task ends, 1 a node looks again.
    let mut events: BinaryHeap<Reverse<(u64, u8, usize, usize)>> = BinaryHeap::new();
    let planning = Instant::now();
    let mut now = 0u64;
    for node in 0..NODES {
        events.push(Reverse((0, 1, node, 0)));
    }
    let mut retry_at = vec![u64::MAX; NODES];
    while let Some(Reverse((at, kind, node, tenant))) = events.pop() {
        // Shares while every tenant still has work queued.
        if sim.jobs.iter().all(|j| j.left > 0) {
            let span = at - now;
            sim.contended_span += span;
            for t in 0..TENANTS {
                sim.contended_us[t] += span * u64::from(sim.jobs[t].running);
            }
        }
        now = at;
        match kind {
            0 => {
                sim.jobs[tenant].running -= 1;
                sim.free[node] += 1;
            }
            _ => retry_at[node] = u64::MAX,
        }
        let (started, waited) = sim.fill(node, now);
        for (t, end) in started {
            events.push(Reverse((end, 0, node, t)));
        }
        // A slot left free for locality is offered again after the delay
        // (or, without one, when a task ends anywhere: the freed slot's
        // node is the one that looks then).
        if waited && sim.free[node] > 0 {
            if let Some(d) = delay_us {
                let at = now + d.max(1);
                if at < retry_at[node] {
                    retry_at[node] = at;
                    events.push(Reverse((at, 1, node, 0)));
                }
            }
        }
        // Nodes holding inputs that entered a window look again, as the
        // dispatcher rescans its windows when they change.
        for other in std::mem::take(&mut sim.dirty) {
            if sim.free[other] > 0 && retry_at[other] > now {
                retry_at[other] = now;
                events.push(Reverse((now, 1, other, 0)));
            }
        }
    }
    let planning_s = planning.elapsed().as_secs_f64();
    let n = tasks.len() as f64;
    let makespan = now.max(1);
    let slots_us = makespan as f64 * (NODES as f64 * f64::from(SLOTS));
    let total_slots = NODES as f64 * f64::from(SLOTS);
    let held: u64 = sim.contended_us.iter().sum();
    let shares: Vec<Value> = (0..TENANTS)
        .map(|t| {
            let avg = sim.contended_us[t] as f64 / sim.contended_span.max(1) as f64;
            json!({
                "tenant": t,
                "tasks": sim.jobs[t].queue.len(),
                "slots_while_all_compete": avg / total_slots,
                "share_of_busy_slots": sim.contended_us[t] as f64 / held.max(1) as f64,
                "fair_share": 1.0 / TENANTS as f64,
            })
        })
        .collect();
    json!({
        "policy": match delay_us {
            None => "local only".to_string(),
            Some(0) => "no locality wait".to_string(),
            Some(d) => format!("delay scheduling, D = {} ms", d as f64 / 1000.0),
        },
        "locality": sim.local as f64 / n,
        "remote_tasks": sim.remote,
        "slot_utilisation": sim.busy_us as f64 / slots_us,
        "makespan_s": makespan as f64 / 1e6,
        "ideal_makespan_s": n * LOCAL_US as f64 / total_slots / 1e6,
        "tenant_shares": shares,
        "planning_us_per_task": planning_s * 1e6 / n,
    })
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut rng = StdRng::seed_from_u64(0x001a_5eed);
    let mut cumulative = Vec::with_capacity(NODES);
    let mut acc = 0.0;
    for i in 0..NODES {
        acc += 1.0 / ((i + 1) as f64).powf(SKEW);
        cumulative.push(acc);
    }
    let mut bounds = Vec::new();
    let mut w = 0.0;
    for x in TENANT_WEIGHTS {
        w += x;
        bounds.push(w);
    }
    let tasks: Vec<Task> = (0..count)
        .map(|_| {
            let x = rng.gen::<f64>() * w;
            let tenant = bounds.partition_point(|&b| b < x).min(TENANTS - 1);
            Task {
                tenant,
                holders: place(&mut rng, &cumulative),
            }
        })
        .collect();
    let most_loaded = {
        let mut per_node = vec![0u64; NODES];
        for t in &tasks {
            for h in t.holders {
                per_node[h as usize] += 1;
            }
        }
        let max = per_node.iter().copied().max().unwrap_or(0);
        let min = per_node.iter().copied().min().unwrap_or(0);
        json!({ "replicas_on_busiest_node": max, "replicas_on_idlest_node": min })
    };
    let policies = [None, Some(5_000), Some(20_000), Some(0)];
    let results: Vec<Value> = policies.iter().map(|&d| run(&tasks, d)).collect();
    let report = json!({
        "tasks": count, "nodes": NODES, "slots_per_node": SLOTS, "replicas": REPLICAS,
        "tenants": TENANTS, "tenant_weights": TENANT_WEIGHTS, "window_per_job": WINDOW,
        "task_ms_local": LOCAL_US as f64 / 1000.0, "task_ms_remote": REMOTE_US as f64 / 1000.0,
        "placement_skew": most_loaded,
        "policies": results,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}
