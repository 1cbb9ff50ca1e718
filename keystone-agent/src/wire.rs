//! The agent's own words (health, where weights come from, the
//! status of its files) as keystone-api says them: one conversion each.

use keystone_api as api;

use crate::{
    dataplane::problems::DataplaneProblem, health::HealthState, outcome::TrafficSource,
    persist::PersistStatus,
};

impl From<HealthState> for api::HealthState {
    fn from(h: HealthState) -> api::HealthState {
        match h {
            HealthState::Up => api::HealthState::Up,
            HealthState::Down => api::HealthState::Down,
            HealthState::Unknown => api::HealthState::Unknown,
        }
    }
}

impl From<TrafficSource> for api::TrafficSource {
    fn from(t: TrafficSource) -> api::TrafficSource {
        match t {
            TrafficSource::Config => api::TrafficSource::Config,
            TrafficSource::Deployment {
                deployment_id,
                state,
            } => api::TrafficSource::Deployment {
                deployment_id,
                state,
            },
            TrafficSource::Manual { reason } => api::TrafficSource::Manual { reason },
        }
    }
}

impl From<DataplaneProblem> for api::DataplaneProblem {
    fn from(p: DataplaneProblem) -> api::DataplaneProblem {
        api::DataplaneProblem {
            kind: p.kind.to_owned(),
            message: p.message,
        }
    }
}

impl From<PersistStatus> for api::PersistStatus {
    fn from(p: PersistStatus) -> api::PersistStatus {
        api::PersistStatus {
            saved: p.saved,
            write_failures: p.write_failures,
            unsaved: p
                .unsaved
                .into_iter()
                .map(|(file, why)| (file.to_owned(), why))
                .collect(),
            recovered: p.recovered,
        }
    }
}
