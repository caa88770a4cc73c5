//! One module per group of subcommands.

pub mod agent;
pub mod backup;
pub mod cache;
pub mod completions;
pub mod context;
pub mod control;
pub mod dev;
pub mod dns;
pub mod domains;
pub mod edge;
pub mod endpoints;
pub mod follow;
pub mod gateway;
pub mod identity;
pub mod join_token;
pub mod logs;
pub mod node;
pub mod proxy;
pub mod region_admin;
pub mod resources;
pub mod rollout;
pub mod secrets;
pub mod top;
