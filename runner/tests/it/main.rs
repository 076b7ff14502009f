//! The runner's one integration-test binary: end-to-end through the real binaries and
//! real loopback HTTP.
mod serve_sim;
mod sweep;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The first of `n` loopback ports `step` apart that are all free at the time of asking, for
/// a server a test starts on a port of its choosing (`serve-sim --port`, a plan's
/// `port_base + i·port_step`).
///
/// They come from below the kernel's ephemeral range (32768–60999 on Linux), where every
/// socket bound to port 0 and every outgoing connection of the other tests running
/// alongside gets its port: a port taken from that range and released could be theirs
/// before the server binds it. Below it, only this function hands ports out, and never the
/// same one twice in a process.
pub fn free_ports(n: u16, step: u16) -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let width = 1 + u32::from(n.saturating_sub(1)) * u32::from(step);
    let offset = std::process::id() % SPAN;
    for _ in 0..(SPAN / width.max(1)) {
        let at = NEXT.fetch_add(width, Ordering::Relaxed);
        let base = LOW + (offset + at) % (SPAN - width);
        let all_free = (0..u32::from(n))
            .all(|i| TcpListener::bind(("127.0.0.1", (base + i * u32::from(step)) as u16)).is_ok());
        if all_free {
            return base as u16;
        }
    }
    panic!("no {n} free loopback ports {step} apart below the ephemeral range");
}

/// One free loopback port (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1, 0)
}
