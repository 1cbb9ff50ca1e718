//! The agent's deployments as the admin API shows them (`GET /deployments/{id}`):
//! keystone-api's client view, with its states, history and helpers.

pub use keystone_api::{DeployState, Deployment, Step};
