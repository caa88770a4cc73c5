//! Meridian's domain model: service definitions, their validation, and the pure derivation of one
//! regional deployment per region.
//!
//! This crate is the shared vocabulary of every other crate. It must stay pure: no I/O, no clocks,
//! no randomness, no async. Everything here is a function of its inputs, which is what lets the
//! property tests state the derivation's laws.

pub mod analysis;
mod autoscale;
mod cache;
mod certificates;
mod compute;
mod concurrency;
mod definition;
mod deploy;
mod derive;
mod domains;
mod duration;
mod edges;
pub mod env;
mod error;
mod geo;
mod image_ref;
pub mod logs;
mod names;
mod parse;
mod purge;
mod resources;
mod rollout;
#[cfg(test)]
mod scale_errors;
mod sleep;
pub mod traffic;
mod validate;
pub mod waves;

pub use analysis::{Analysis, AnalysisFigures, VersionFigures};
pub use autoscale::{AutoscaleStatus, ScaleTarget, ScaleTargets, DEFAULT_DOWN_WINDOW};
pub use cache::{validate_cache, CacheKeyPolicy, CachePolicy};
pub use certificates::{CertificateSource, CertificateState};
pub use compute::{Cpu, Memory, Resources};
pub use concurrency::Concurrency;
pub use definition::{
    Definition, HealthCheck, Hsts, HttpCheck, Https, Image, ImageOverride, Mesh, Port, Process,
    ProcessOverride, Protocol, RegionOverride, RegistryCredentials, Route, Runtime,
    RuntimeOverride, Scale, ScaleOverride, ServiceSpec, TcpCheck,
};
pub use deploy::{Amount, CanaryStep, Deploy, DeployOverride, Strategy};
pub use derive::{derive_regional, derive_spec, RegionalDeployment};
pub use domains::{check_domain, contested_domains, covering_wildcards, domains_overlap};
pub use duration::HumanDuration;
pub use edges::{validate_edge_anycast, EdgeAnycast, EdgeStatus};
pub use env::{check_secret_name, EnvValue, SecretRef};
pub use error::{FieldError, ValidationErrors};
pub use geo::distance_km;
pub use image_ref::{check_digest, Credential, ImageRef, RegistryOptions, DEFAULT_REGISTRY};
pub use logs::{compile_grep, LogEvent, LogLine, LogNotice, LogParams, LogRequest, NoticeKind};
pub use names::{check_dns_label, check_host_name, check_url_path};
pub use parse::{parse_definition_json, parse_json};
pub use purge::{
    EdgeAcks, Purge, PurgeAccepted, PurgeRequest, PurgeTarget, PURGE_HISTORY, PURGE_TAG_MAX,
    PURGE_URL_MAX,
};
pub use resources::{
    App, Change, ChangeKind, ChangeOp, Deployment, DeploymentOrigin, Endpoint, EndpointHealth,
    EndpointInput, Org, Region, RegionInput, RegionReport, SecretInfo, SecretOwner, ServiceHealth,
    ServiceSummary, TokenInfo, VersionHealth,
};
pub use rollout::{
    Gate, GateFailure, RolloutControl, RolloutEvent, RolloutMode, RolloutPhase, RolloutRecord,
    RolloutStatus, VersionWeight,
};
pub use sleep::{serves, Sleep, SleepMode, SLEEPING_DEEP, SLEEPING_LIGHT};
pub use traffic::{
    check_metrics_range, parse_metrics_range, quantile_ms, validate_targets, validate_traffic,
    MetricsPoint, MetricsTarget, Percentiles, Rates, RegionMetrics, RequestFigures, ServiceMetrics,
    ServiceTraffic, StatusClasses, TrafficWindow, LATENCY_BOUNDS_MS, LATENCY_BUCKETS,
    MAX_METRICS_WINDOW_SECONDS, MAX_REPORTED_WINDOWS, TRAFFIC_STEP_SECONDS,
};
pub use validate::{
    validate_definition, validate_endpoint, validate_region, validate_region_report, Limits,
    MAX_REPORTED_SERVICES,
};
