//! A throwaway PostgreSQL server for tests: `initdb` in a temporary
//! directory, `postgres` on a free loopback port, stopped and removed on
//! drop. It needs Debian's `postgresql` package (scripts/setup installs
//! it) and no system service.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct TestPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// The superuser's password: the server listens on loopback, where
    /// other local users can reach it.
    password: String,
    /// Run the server's commands as this user (initdb refuses root).
    user: Option<String>,
}

/// Where the server binaries are: `INSITU_PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("INSITU_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl TestPostgres {
    /// Starts a server; the error says what is missing.
    pub fn start() -> Result<Self, String> {
        let bin = pg_bin().ok_or("no PostgreSQL server binaries: run scripts/setup")?;
        let dir = std::env::temp_dir().join(format!("insitu-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let user = is_root().then(|| "postgres".to_string());
        if let Some(u) = &user {
            let ok = Command::new("chown")
                .arg(u)
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("cannot hand {} to user {u}", dir.display()));
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &password).map_err(|e| e.to_string())?;
        if let Some(u) = &user {
            let ok = Command::new("chown")
                .arg(u)
                .arg(&pwfile)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("cannot hand {} to user {u}", pwfile.display()));
            }
        }
        let pg = Self {
            dir,
            bin,
            port,
            user,
            password,
        };
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "insitu",
                "--auth=scram-sha-256",
                "--pwfile",
                path(&pwfile),
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        pg.restart()?;
        Ok(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A URL for a database of the server (`postgres` exists from the start).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://insitu:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// Stops the server now (fast shutdown: every committed transaction
    /// is on disk), to test what happens while it is down.
    pub fn stop(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "stop"])
    }

    /// Starts the server (again) on its port.
    pub fn restart(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            path(&self.dir)
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        )
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run(
            "pg_ctl",
            &["-D", path(&data), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
