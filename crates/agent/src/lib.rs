//! Meridian's agent: one per machine. It follows its region's control plane for the instances
//! its node must run (delta xDS, `meridian.v1.Assignment`), runs each as a process with `PORT`
//! and `MERIDIAN_*` variables on an address of its own, keeps its output in rotated files,
//! health-checks it as its definition says, restarts it with backoff and reports it failed past
//! its restart limit, and reports every instance's state to the control plane.
//!
//! It must not decide placement (the control plane does) and holds no state that the control
//! plane cannot send again.

mod addresses;
mod assignments;
mod health;
mod instance;
mod logs;
mod report;
mod supervisor;

pub use addresses::AddressPool;
pub use instance::{InstanceState, State};
pub use logs::log_dir;
pub use supervisor::{run_agent, AgentOptions};
