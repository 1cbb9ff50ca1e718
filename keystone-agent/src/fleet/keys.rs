//! Where the fleet keeps what under its prefix.

/// The layout of the fleet's keys this agent writes and understands.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything of the fleet (what the watch covers).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The layout version ([`FORMAT_VERSION`]) of everything below.
    pub fn format_version(&self) -> String {
        format!("{}/format_version", self.prefix)
    }

    /// The desired state: deployments (progress, params, history), traffic plans
    /// (manual weights included) and the id sequence, one JSON document written with
    /// compare-and-swap on its mod revision.
    pub fn state(&self) -> String {
        format!("{}/state", self.prefix)
    }

    /// The leader's gateway id, under the leader's lease.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// Members' records, each under its member's lease.
    pub fn members(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    pub fn member(&self, id: &str) -> String {
        format!("{}/members/{id}", self.prefix)
    }
}
