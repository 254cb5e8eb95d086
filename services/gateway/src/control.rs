//! This gateway among its peers on one catalog: its beat (alive, where it
//! is reached, what it runs), the leader leases that let exactly one
//! gateway run each background loop, the job leases that say which
//! gateway drives each job, the intents of the blobs it uses, and the
//! node membership every gateway shares.
//!
//! On the embedded catalog this gateway is alone: it wins every lease and
//! needs no intents, and the same code runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use insitu_catalog::{GatewayBeat, GatewayInfo};

use crate::Gateway;

/// The background loops that one gateway at a time runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Repair,
    Gc,
    Orphans,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Repair, Role::Gc, Role::Orphans];

    pub fn name(self) -> &'static str {
        match self {
            Role::Repair => "repair",
            Role::Gc => "gc",
            Role::Orphans => "orphan-sweep",
        }
    }
}

pub struct Control {
    /// This gateway's id, new at every start.
    pub id: String,
    /// Where peers reach this gateway (its internal API).
    addr: RwLock<String>,
    lease: Duration,
    /// Until when (by this gateway's clock) it leads each role: the
    /// lease's time to live, counted from before the call that took it.
    leads: Mutex<HashMap<Role, Instant>>,
    /// Peers seen alive at the last turn.
    peers: RwLock<Vec<GatewayInfo>>,
    /// For calls forwarded to peers.
    http: reqwest::Client,
}

impl Control {
    pub fn new(lease: Duration) -> Self {
        // Bounded, so no deadline arithmetic can overflow.
        let lease = lease.clamp(Duration::from_secs(1), Duration::from_secs(3600));
        Self {
            id: format!("gw-{}", uuid::Uuid::new_v4().simple()),
            addr: RwLock::new(String::new()),
            lease,
            leads: Mutex::new(HashMap::new()),
            peers: RwLock::new(Vec::new()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn set_addr(&self, addr: String) {
        if let Ok(mut a) = self.addr.write() {
            *a = addr;
        }
    }

    pub fn addr(&self) -> String {
        self.addr.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// How long a published intent outlives a gateway that dies holding
    /// it (renewed every publish while held).
    pub fn intent_ms(&self) -> i64 {
        (self.lease * 3).max(Duration::from_secs(30)).as_millis() as i64
    }

    /// A lease's time to live, in milliseconds.
    pub fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Whether this gateway leads `role` now.
    pub fn leads(&self, role: Role) -> bool {
        self.leads
            .lock()
            .map(|l| l.get(&role).is_some_and(|until| Instant::now() < *until))
            .unwrap_or(false)
    }

    /// The live gateway that drives the fewest jobs, this one (driving
    /// `mine`) on a tie: where a new job goes.
    pub fn least_loaded(&self, mine: u32) -> String {
        let peers = self.peers.read().map(|p| p.clone()).unwrap_or_default();
        peers
            .iter()
            .filter(|p| p.load.jobs < mine)
            .min_by_key(|p| (p.load.jobs, p.id.clone()))
            .map_or_else(|| self.id.clone(), |p| p.id.clone())
    }

    /// Where a live peer is reached.
    pub fn peer_addr(&self, id: &str) -> Option<String> {
        self.peers
            .read()
            .ok()?
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.addr.clone())
    }

    /// The live peers (not this gateway), as of the last turn.
    pub fn peers(&self) -> Vec<GatewayInfo> {
        self.peers.read().map(|p| p.clone()).unwrap_or_default()
    }
}

/// How often the control loop turns: well inside a lease.
fn turn(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Beats, takes and renews leases, starts the jobs this gateway owns,
/// publishes intents and refreshes node membership, every turn.
pub async fn control_loop(gw: Arc<Gateway>) {
    let c = &gw.control;
    let mut tick = tokio::time::interval(turn(c.lease));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        beat(&gw).await;
        take_leads(&gw).await;
        gw.jobs.own_jobs().await;
        crate::nodes::membership::refresh(&gw).await;
    }
}

async fn beat(gw: &Gateway) {
    let c = &gw.control;
    let beat = GatewayBeat {
        id: c.id.clone(),
        addr: c.addr(),
        load: gw.jobs.local_load(),
    };
    if let Err(e) = gw.catalog.gateway_beat(&beat).await {
        tracing::warn!(error = %e, "gateway beat failed");
        return;
    }
    match gw.catalog.gateways(c.lease_ms()).await {
        Ok(all) => {
            let peers: Vec<GatewayInfo> = all.into_iter().filter(|p| p.id != c.id).collect();
            gw.jobs.set_remote(peers.iter().map(|p| p.load.clone()));
            if let Ok(mut p) = c.peers.write() {
                *p = peers;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the live gateways"),
    }
}

async fn take_leads(gw: &Gateway) {
    let c = &gw.control;
    for role in Role::ALL {
        let asked = Instant::now();
        let held = gw
            .catalog
            .take_lease(role.name(), &c.id, c.lease_ms())
            .await;
        let was = c.leads(role);
        let until = match held {
            Ok(Some(_)) => Some(asked + c.lease),
            Ok(None) => None,
            Err(e) => {
                // Unknown: what was held runs out by itself.
                tracing::warn!(role = role.name(), error = %e, "cannot renew a leader lease");
                continue;
            }
        };
        let now = until.is_some();
        if now != was {
            tracing::info!(role = role.name(), leads = now, "leader lease changed");
        }
        if let Ok(mut l) = c.leads.lock() {
            match until {
                Some(t) => l.insert(role, t),
                None => l.remove(&role),
            };
        }
    }
}

impl insitu_jobs::Peers for Control {
    fn id(&self) -> &str {
        &self.id
    }

    fn lease_ms(&self) -> i64 {
        Control::lease_ms(self)
    }

    fn least_loaded(&self, mine: u32) -> String {
        Control::least_loaded(self, mine)
    }

    fn peer_addr(&self, id: &str) -> Option<String> {
        Control::peer_addr(self, id)
    }

    fn alone(&self) -> bool {
        self.peers().is_empty()
    }
}
