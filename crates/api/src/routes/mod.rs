//! The API's handlers, one module per resource family.

pub mod domains;
pub mod endpoints;
pub mod feed;
pub mod logs;
pub mod purges;
pub mod regions;
pub mod reports;
pub mod rollouts;
pub mod secrets;
pub mod services;
pub mod tenancy;
pub mod traffic;
