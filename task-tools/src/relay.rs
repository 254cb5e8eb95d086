//! The task container's first process. The container has no network but
//! its own loopback; SDKs want a TCP endpoint, and the node's endpoint is
//! a Unix socket that only this container can reach. The relay listens
//! on the loopback and copies each connection to the socket and back.
//! As process 1 it also reaps the orphans tasks leave, and starts the
//! node's launcher (the command after `--`) as its child: the container
//! lives as long as the launcher does.
//!
//! Tasks run as the same user: the relay makes itself undumpable, so they
//! cannot ptrace it or read its memory, and it never dies of their load
//! (connections are capped; a thread that cannot start drops its
//! connection, not the relay).

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections relayed at once (the node's endpoint allows as many).
const MAX_CONNECTIONS: usize = 64;

const USAGE: &str = "usage: insitu-task relay ADDR SOCKET [-- COMMAND...]";

pub fn run(args: &[String]) -> Result<(), String> {
    let (ours, command) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &args[args.len()..]),
    };
    let [addr, socket] = ours else {
        return Err(USAGE.into());
    };
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("cannot make the relay undumpable: {e}"))?;
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // The launcher gets the container's standard streams; it is dumpable
    // again once it runs its own program.
    let launcher = match command {
        [] => None,
        [program, rest @ ..] => {
            let child = std::process::Command::new(program)
                .args(rest)
                .spawn()
                .map_err(|e| format!("cannot start {program}: {e}"))?;
            Some(nix::unistd::Pid::from_raw(child.id() as i32))
        }
    };
    // Without its reaper the relay still relays (but then it cannot see
    // its launcher end, so a launcher makes the reaper required).
    let reaper = std::thread::Builder::new().spawn(move || reap_orphans(launcher));
    if reaper.is_err() && launcher.is_some() {
        return Err("cannot start the reaper".into());
    }
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(tcp) => tcp,
            Err(_) => {
                // Out of descriptors, say: back off rather than spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            drop(tcp);
            continue;
        }
        let (socket, count) = (socket.clone(), open.clone());
        let started = std::thread::Builder::new().spawn(move || {
            if let Ok(unix) = UnixStream::connect(&socket) {
                let _ = splice(tcp, unix);
            }
            count.fetch_sub(1, Ordering::SeqCst);
        });
        if started.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// Copies both ways until each side has finished sending.
fn splice(tcp: TcpStream, unix: UnixStream) -> io::Result<()> {
    let (mut tcp_in, mut unix_out) = (tcp.try_clone()?, unix.try_clone()?);
    let upstream = std::thread::Builder::new().spawn(move || {
        let _ = io::copy(&mut tcp_in, &mut unix_out);
        let _ = unix_out.shutdown(Shutdown::Write);
    })?;
    let (mut unix_in, mut tcp_out) = (unix, tcp);
    let _ = io::copy(&mut unix_in, &mut tcp_out);
    let _ = tcp_out.shutdown(Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

/// Reaps every child; when `launcher` ends, so does the relay, with its
/// status (the container stops, and the node sees its launcher gone).
fn reap_orphans(launcher: Option<nix::unistd::Pid>) {
    use nix::sys::wait::WaitStatus;
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid) == launcher => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if Some(pid) == launcher => {
                std::process::exit(128 + signal as i32)
            }
            Ok(_) => {}
            // No children now: look again later.
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
