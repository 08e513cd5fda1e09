//! A loopback port for a server a test starts as a process of its own, which binds it later.
//!
//! Binding port 0 and handing the port on is racy: the kernel gives outgoing connections their
//! local ports from the same ephemeral range, so between the probe and the server's bind any
//! client in the test run (a Kafka consumer, an HTTP pool) may take that very port, and the
//! server fails with "Address already in use". Ports are therefore taken below the ephemeral
//! range, where only explicit binds go, and each one is handed out once per test process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: above the well-known and most registered service ports.
const LOWEST: u32 = 10_000;

pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let below = ephemeral_start();
    if below <= LOWEST + 1_000 {
        return kernel_port();
    }
    let span = below - LOWEST;
    // Processes running side by side start at different places.
    let start = std::process::id() % span;
    for _ in 0..span {
        let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {LOWEST}..{below}");
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap()
}
