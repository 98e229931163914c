//! What every router's test rig has: example-app backends for both slots.

use std::net::SocketAddr;

use cutover_core::Slot;
use cutover_router::conformance::{BLUE_VERSION, GREEN_VERSION};
use cutover_test_support::ExampleApp;

/// `per_slot` example apps answering as each slot's conformance release.
pub struct Backends {
    pub blue: Vec<ExampleApp>,
    pub green: Vec<ExampleApp>,
}

impl Backends {
    pub fn spawn(per_slot: usize) -> Backends {
        let spawn = |version| (0..per_slot).map(|_| ExampleApp::spawn(version, &[])).collect();
        Backends {
            blue: spawn(BLUE_VERSION),
            green: spawn(GREEN_VERSION),
        }
    }

    /// The addresses of a slot's backends, as `Rig::backends` returns them.
    pub fn addrs(&self, slot: Slot) -> Vec<SocketAddr> {
        match slot {
            Slot::Blue => &self.blue,
            Slot::Green => &self.green,
        }
        .iter()
        .map(|a| a.addr)
        .collect()
    }
}
