//! Meridian's agent: one per machine. It follows its region's control plane for the instances
//! its node must run (delta xDS, `meridian.v1.Assignment`), runs each as a process with a clean
//! environment (its definition's, with `{secret: NAME}` values resolved from those its
//! assignment delivered, `PORT` and `MERIDIAN_*` variables, never the agent's own) on
//! an address of its own, keeps its output in rotated files (and answers its region's
//! queries of it), health-checks it as its definition
//! says, restarts it with backoff and reports it failed past its restart limit, and reports every instance's state to the control plane. It runs the
//! node proxy: each instance's inbound mesh listener (mutual TLS with the instance's workload
//! certificate, authorized by the service's policy) and its outbound listener (`HTTP_PROXY`),
//! through which it calls other services by name over mutual TLS (and, in host mode, a relay
//! port per TCP service port it may reach, named in its `MERIDIAN_TCP_*` variables).
//!
//! It must not decide placement (the control plane does) and holds no state that the control
//! plane cannot send again.

mod addresses;
mod assignments;
mod certs;
pub mod cgroups;
mod drain;
mod health;
mod host_relays;
mod image;
mod instance;
mod logs;
mod netns;
mod netns_relays;
mod node_proxy;
mod relay_numbers;
mod secrets;
mod sleep;
mod start_metrics;
mod supervisor;

pub use addresses::AddressPool;
pub use image::runc::available as runc_available;
pub use instance::{InstanceState, State};
pub use logs::{answer_locally, log_dir, AgentLogs, LocalQuery};
pub use netns::{available as netns_available, prefix as netns_prefix};
pub use node_proxy::{mesh_port, MESH_PORT_BASE, OUTBOUND_PORT};
pub use supervisor::{run_agent, AgentOptions, Isolation};
