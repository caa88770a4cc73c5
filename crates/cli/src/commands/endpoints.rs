//! `meridian endpoint …`: register, list and remove a service's endpoints by hand (until agents
//! report instances, this is how a regional control plane learns where a service runs).

use anyhow::{Context, Result};
use clap::Subcommand;
use meridian_model::Endpoint;
use reqwest::Method;
use serde_json::json;

use super::resources::{service_path, AppScope};
use crate::client::Client;
use crate::output::{print, timestamp, Format};

/// `meridian endpoint …`
#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Register or update an endpoint of a service.
    Set {
        /// The service.
        service: String,
        /// The endpoint's id (a DNS label, unique within the service).
        id: String,
        #[command(flatten)]
        scope: AppScope,
        /// The region it runs in (one of the service's regions).
        #[arg(long)]
        region: String,
        /// Its IP address.
        #[arg(long)]
        address: String,
        /// A port number that differs from the definition's, as NAME=NUMBER (repeatable).
        #[arg(long = "port", value_name = "NAME=NUMBER")]
        ports: Vec<String>,
        /// Its health: healthy, unhealthy or draining.
        #[arg(long, default_value = "healthy", value_parser = ["healthy", "unhealthy", "draining"])]
        health: String,
    },
    /// List a service's endpoints.
    List {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: AppScope,
    },
    /// Remove an endpoint.
    Remove {
        /// The service.
        service: String,
        /// The endpoint's id.
        id: String,
        #[command(flatten)]
        scope: AppScope,
    },
}

/// Runs `meridian endpoint …`.
pub async fn endpoint(api: &Client, format: Format, cmd: EndpointCommand) -> Result<()> {
    match cmd {
        EndpointCommand::Set {
            service,
            id,
            scope,
            region,
            address,
            ports,
            health,
        } => {
            let mut numbers = serde_json::Map::new();
            for port in &ports {
                let (name, number) = port
                    .split_once('=')
                    .with_context(|| format!("--port {port}: write NAME=NUMBER, e.g. http=8081"))?;
                let number: u32 = number
                    .parse()
                    .with_context(|| format!("--port {port}: `{number}` is not a port number"))?;
                numbers.insert(name.to_owned(), number.into());
            }
            let path = service_path(api, &service, &scope).await?;
            let body =
                json!({"region": region, "address": address, "ports": numbers, "health": health});
            let stored: Endpoint = api
                .send(Method::PUT, &format!("{path}/endpoints/{id}"), &body)
                .await?;
            println!(
                "endpoint {id} of {}/{}/{} in {}: {} ({})",
                stored.org,
                stored.app,
                stored.service,
                stored.region,
                stored.address,
                stored.health.as_str()
            );
            Ok(())
        }
        EndpointCommand::List { service, scope } => {
            let path = service_path(api, &service, &scope).await?;
            let endpoints: Vec<Endpoint> = api.get(&format!("{path}/endpoints")).await?;
            let headers = ["ID", "REGION", "ADDRESS", "PORTS", "HEALTH", "UPDATED"];
            print(format, &endpoints, &headers, |list| {
                list.iter()
                    .map(|e| {
                        let ports: Vec<String> =
                            e.ports.iter().map(|(n, p)| format!("{n}={p}")).collect();
                        vec![
                            e.id.clone(),
                            e.region.clone(),
                            e.address.clone(),
                            ports.join(","),
                            e.health.as_str().to_owned(),
                            timestamp(e.updated_at),
                        ]
                    })
                    .collect()
            })
        }
        EndpointCommand::Remove { service, id, scope } => {
            let path = service_path(api, &service, &scope).await?;
            api.delete(&format!("{path}/endpoints/{id}")).await?;
            println!("removed endpoint {id} of {service}");
            Ok(())
        }
    }
}
