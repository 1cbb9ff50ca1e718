//! The shapes of Keystone's admin API and deployment webhook, as clients (keystone-ctl,
//! the lab tests, xtask) read and send them: requests, answers, deployment states,
//! strategies, event kinds and step parameters.
//!
//! Words on the wire are enums with an `Unknown` variant, so an answer from a newer
//! agent still reads; unknown fields are ignored and a field left out reads as its
//! default. `keystone-agent/openapi.yaml` is checked against these types
//! (`tests/openapi.rs`).
#![forbid(unsafe_code)]

#[macro_use]
mod wire_enum;
mod announce;
mod deployment;
mod fields;
mod fleet;
mod params;
mod plan;
mod status;
mod time;

pub use announce::{
    AnnounceReason, AnnounceStatus, BgpSession, ConfigureResult, DrainRequest, DrainState,
    VipAnnounce,
};
pub use deployment::{
    Accepted, Action, Actor, Analysis, CanaryRequest, DeployState, Deployment, DeploymentList,
    DeploymentParams, DeploymentWebhook, EventKind, Notification, PrometheusQuery, Step, Strategy,
    SwitchRequest, SwitchStrategy, Verdict, WebhookConfig, WeightsRequest,
};
pub use fields::struct_fields;
pub use fleet::{FleetMember, FleetStatus, STALE_HEADER};
pub use params::{DurationValue, StepParams, defaults};
pub use plan::{
    OnFailure, Orchestration, PhaseState, Plan, PlanEvent, PlanList, PlanPhase, PlanRequest,
    PlanState, PlanStrategy,
};
pub use status::{
    BackendIdentity, BackendStatus, DataplaneProblem, ErrorBody, ForwardingMode, Health,
    HealthState, HealthStatus, PersistStatus, Problem, Protocol, Reloaded, Status, Tenant,
    TenantAbout, TenantBackend, TenantList, TenantStatus, TrafficSource,
};
pub use time::rfc3339_unix;
pub use wire_enum::{WireEnum, known};
