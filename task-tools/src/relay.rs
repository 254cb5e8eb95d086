//! The task container's first process. The container has no network but
//! its own loopback; SDKs want a TCP endpoint, and the node's endpoint is
//! a Unix socket that only this container can reach. The relay listens
//! on the loopback and copies each connection to the socket and back.
//! As process 1 it also reaps the orphans tasks leave.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub fn run(args: &[String]) -> Result<(), String> {
    let [addr, socket] = args else {
        return Err("usage: insitu-task relay ADDR SOCKET".into());
    };
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    std::thread::spawn(reap_orphans);
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let socket = socket.clone();
        std::thread::spawn(move || {
            if let Ok(unix) = UnixStream::connect(&socket) {
                let _ = splice(tcp, unix);
            }
        });
    }
    Ok(())
}

/// Copies both ways until each side has finished sending.
fn splice(tcp: TcpStream, unix: UnixStream) -> io::Result<()> {
    let (mut tcp_in, mut unix_out) = (tcp.try_clone()?, unix.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut tcp_in, &mut unix_out);
        let _ = unix_out.shutdown(Shutdown::Write);
    });
    let (mut unix_in, mut tcp_out) = (unix, tcp);
    let _ = io::copy(&mut unix_in, &mut tcp_out);
    let _ = tcp_out.shutdown(Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

fn reap_orphans() {
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) => {}
            // No children now: look again later.
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
