//! What the integration tests share: the address of a service a test needs, and a free port.

// Each test file uses some of these.
#![allow(dead_code)]

/// The address of a service a test needs, from `var`. Such tests are ignored by a plain
/// `cargo test`; asked for (`--include-ignored`, as `scripts/test.sh` does) without their
/// service, they fail: passing would claim a test that never ran.
pub fn service_address(var: &str, service: &str) -> String {
    match std::env::var(var) {
        Ok(address) if !address.is_empty() => address,
        _ => panic!("{var} is not set: this test needs {service}; scripts/test.sh starts it"),
    }
}

/// A loopback port free at the time of the call, for a server a test starts as a process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
