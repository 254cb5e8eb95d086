//! `insitu admin ...`: calls the admin API with the root credentials.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::signed_client::SignedClient;
use crate::RootArgs;

#[derive(Args)]
pub struct AdminArgs {
    /// Gateway endpoint.
    #[arg(
        long,
        env = "INSITU_ENDPOINT",
        default_value = "http://127.0.0.1:9000",
        global = true
    )]
    endpoint: String,
    #[command(flatten)]
    root: RootArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage access keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// List storage nodes: state, capacity, blob counts, repair progress.
    Nodes,
    /// Drain, undrain or remove a storage node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Stop placing blobs on a node and move its replicas elsewhere.
    Drain { id: String },
    /// Let a drained node take new blobs again.
    Undrain { id: String },
    /// Forget a node; its replicas are re-created on the others.
    Remove { id: String },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and its first access key; prints JSON credentials.
    Create { name: String },
    /// List tenants.
    List,
    /// Show a tenant's policy, or set it (the flags given replace it).
    Policy {
        name: String,
        /// `runsc`: all the tenant's tasks run under gVisor.
        #[arg(long)]
        runtime: Option<String>,
        #[arg(long)]
        max_memory_mb: Option<u64>,
        #[arg(long)]
        max_cpus: Option<f64>,
        #[arg(long)]
        max_disk_mb: Option<u64>,
        #[arg(long)]
        max_timeout_s: Option<u64>,
        #[arg(long)]
        max_output_mb: Option<u64>,
        /// Values for phases that give none.
        #[arg(long)]
        default_memory_mb: Option<u64>,
        #[arg(long)]
        default_cpus: Option<f64>,
        #[arg(long)]
        default_disk_mb: Option<u64>,
        #[arg(long)]
        default_timeout_s: Option<u64>,
        #[arg(long)]
        default_output_mb: Option<u64>,
        /// Set the policy (without it, the current one is shown).
        #[arg(long)]
        set: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Add an access key to a tenant; prints JSON credentials.
    Create { tenant: String },
}

pub async fn run(args: AdminArgs) -> Result<()> {
    let (Some(ak), Some(sk)) = (args.root.root_access_key, args.root.root_secret_key) else {
        bail!("root credentials are needed: set INSITU_ROOT_ACCESS_KEY and INSITU_ROOT_SECRET_KEY or pass --root-access-key/--root-secret-key");
    };
    let client = SignedClient::new(&args.endpoint, &ak, &sk);
    let (status, body) = match args.command {
        AdminCommand::Tenant {
            command: TenantCommand::Create { name },
        } => {
            client
                .call(
                    "POST",
                    "/_insitu/v1/admin/tenants",
                    Some(serde_json::json!({ "name": name })),
                )
                .await?
        }
        AdminCommand::Tenant {
            command:
                TenantCommand::Policy {
                    name,
                    runtime,
                    max_memory_mb,
                    max_cpus,
                    max_disk_mb,
                    max_timeout_s,
                    max_output_mb,
                    default_memory_mb,
                    default_cpus,
                    default_disk_mb,
                    default_timeout_s,
                    default_output_mb,
                    set,
                },
        } => {
            let path = format!("/_insitu/v1/admin/tenants/{name}/policy");
            if set {
                let mut policy = serde_json::Map::new();
                let mut put = |k: &str, v: serde_json::Value| {
                    if !v.is_null() {
                        policy.insert(k.to_string(), v);
                    }
                };
                put("runtime", serde_json::json!(runtime));
                put("max_memory_mb", serde_json::json!(max_memory_mb));
                put("max_cpus", serde_json::json!(max_cpus));
                put("max_disk_mb", serde_json::json!(max_disk_mb));
                put("max_timeout_s", serde_json::json!(max_timeout_s));
                put("max_output_mb", serde_json::json!(max_output_mb));
                put("default_memory_mb", serde_json::json!(default_memory_mb));
                put("default_cpus", serde_json::json!(default_cpus));
                put("default_disk_mb", serde_json::json!(default_disk_mb));
                put("default_timeout_s", serde_json::json!(default_timeout_s));
                put("default_output_mb", serde_json::json!(default_output_mb));
                client
                    .call("PUT", &path, Some(serde_json::Value::Object(policy)))
                    .await?
            } else {
                client.call("GET", &path, None).await?
            }
        }
        AdminCommand::Tenant {
            command: TenantCommand::List,
        } => {
            client
                .call("GET", "/_insitu/v1/admin/tenants", None)
                .await?
        }
        AdminCommand::Key {
            command: KeyCommand::Create { tenant },
        } => {
            client
                .call(
                    "POST",
                    &format!("/_insitu/v1/admin/tenants/{tenant}/keys"),
                    None,
                )
                .await?
        }
        AdminCommand::Nodes => client.call("GET", "/_insitu/v1/admin/nodes", None).await?,
        AdminCommand::Node {
            command: NodeCommand::Drain { id },
        } => {
            client
                .call("POST", &format!("/_insitu/v1/admin/nodes/{id}/drain"), None)
                .await?
        }
        AdminCommand::Node {
            command: NodeCommand::Undrain { id },
        } => {
            client
                .call(
                    "POST",
                    &format!("/_insitu/v1/admin/nodes/{id}/undrain"),
                    None,
                )
                .await?
        }
        AdminCommand::Node {
            command: NodeCommand::Remove { id },
        } => {
            client
                .call("DELETE", &format!("/_insitu/v1/admin/nodes/{id}"), None)
                .await?
        }
    };
    if !(200..300).contains(&status) {
        let code = body.get("code").and_then(|c| c.as_str()).unwrap_or("Error");
        let message = body
            .get("message")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        bail!("{code}: {message}");
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}
