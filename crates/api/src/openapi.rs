//! The OpenAPI document: generated from the handlers' annotations, so it describes what the
//! server does.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    domains, endpoints, feed, logs, purges, regions, reports, rollouts, secrets, services, tenancy,
    traffic,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Meridian API", description = "The public API of a Meridian installation."),
    paths(
        crate::whoami, crate::get_trust_bundle,
        tenancy::create_org, tenancy::list_orgs, tenancy::get_org, tenancy::delete_org,
        tenancy::create_token, tenancy::list_tokens, tenancy::delete_token,
        tenancy::create_app, tenancy::list_apps, tenancy::get_app, tenancy::delete_app,
        secrets::put, secrets::list, secrets::delete,
        secrets::put_org, secrets::list_org, secrets::delete_org,
        purges::create,
        regions::put, regions::list, regions::delete, regions::deployments, regions::endpoints,
        regions::intermediate, regions::create_join_token, reports::put, reports::get,
        reports::edges,
        services::apply, services::list, services::get, services::delete,
        services::deployments, services::deployment, services::rollback, services::status,
        rollouts::history, rollouts::abort, rollouts::pause, rollouts::resume,
        rollouts::promote,
        endpoints::put, endpoints::list, endpoints::delete,
        domains::list, domains::upload,
        feed::revision, feed::changes,
        traffic::service_metrics, traffic::prometheus_targets,
        logs::service_logs,
    ),
    components(schemas(crate::ErrorBody, crate::ErrorDetail, meridian_model::FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Objects with declared properties accept no others: the server rejects unknown fields.
fn forbid_additional_properties(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), false.into());
            }
            map.values_mut().for_each(forbid_additional_properties);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(forbid_additional_properties),
        _ => {}
    }
}

/// The document as JSON text.
pub fn document() -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    forbid_additional_properties(&mut doc);
    doc.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sleeping_is_documented_in_definitions() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert!(!schemas["Scale"]["properties"]["sleep"].is_null());
        assert!(!schemas["ScaleOverride"]["properties"]["sleep"].is_null());
        let sleep = &schemas["Sleep"]["properties"];
        for field in ["after", "mode", "deep_after", "queue", "wake_timeout"] {
            assert!(!sleep[field].is_null(), "{field}: {sleep}");
        }
        assert_eq!(
            schemas["SleepMode"]["enum"],
            serde_json::json!(["light", "deep"])
        );
    }

    #[test]
    fn autoscaling_is_documented_in_definitions_and_status() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for field in ["targets", "down_window"] {
            assert!(!schemas["Scale"]["properties"][field].is_null(), "{field}");
            assert!(
                !schemas["ScaleOverride"]["properties"][field].is_null(),
                "{field}"
            );
        }
        let targets = &schemas["ScaleTargets"]["properties"];
        for field in [
            "concurrency",
            "requests_per_second",
            "cpu_percent",
            "memory_percent",
        ] {
            assert!(!targets[field].is_null(), "{field}: {targets}");
        }
        assert!(!schemas["RegionStatus"]["properties"]["autoscale"].is_null());
        let status = &schemas["AutoscaleStatus"]["properties"];
        for field in ["current", "desired", "reason", "decided_at"] {
            assert!(!status[field].is_null(), "{field}: {status}");
        }
    }

    #[test]
    fn rollouts_carry_their_metric_gates_figures_and_events() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let analysis = &schemas["RolloutStatus"]["properties"]["analysis"];
        assert!(!analysis.is_null(), "{}", schemas["RolloutStatus"]);
        let figures = &schemas["VersionFigures"]["properties"];
        for field in ["requests", "failures", "success_rate", "p99_ms"] {
            assert!(!figures[field].is_null(), "{field}: {figures}");
        }
        assert!(!schemas["Deploy"]["properties"]["analysis"].is_null());
        assert!(!schemas["RolloutRecord"]["properties"]["events"].is_null());
        let event = &schemas["RolloutEvent"]["properties"];
        for field in ["at", "phase", "step", "weights", "reason"] {
            assert!(!event[field].is_null(), "{field}: {event}");
        }
    }

    #[test]
    fn service_metrics_are_documented_with_their_parameters_and_figures() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let path = &doc["paths"]["/v1/orgs/{org}/apps/{app}/services/{service}/metrics"]["get"];
        let params: Vec<&str> = path["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            params.contains(&"window") && params.contains(&"step"),
            "{params:?}"
        );
        let schemas = &doc["components"]["schemas"];
        let rates = &schemas["Rates"]["properties"];
        for field in [
            "requests_per_second",
            "error_ratio_4xx",
            "error_ratio_5xx",
            "latency_ms",
        ] {
            assert!(!rates[field].is_null(), "{field}: {rates}");
        }
        assert!(!schemas["RegionMetrics"]["properties"]["instances"].is_null());
        assert!(!schemas["StatusClasses"]["properties"]["5xx"].is_null());
        assert!(!doc["paths"]["/v1/prometheus/targets"]["get"].is_null());
    }

    #[test]
    fn definitions_carry_resources_and_statuses_their_problems() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert!(!schemas["Definition"]["properties"]["resources"].is_null());
        assert!(!schemas["RegionOverride"]["properties"]["resources"].is_null());
        let resources = &schemas["Resources"]["properties"];
        assert!(
            !resources["cpu"].is_null() && !resources["memory"].is_null(),
            "{resources}"
        );
        assert!(!schemas["RegionStatus"]["properties"]["problems"].is_null());
        assert!(!schemas["Image"]["properties"]["credentials"].is_null());
        assert!(!schemas["ImageOverride"]["properties"]["credentials"].is_null());
        let credentials = &schemas["RegistryCredentials"]["properties"];
        assert!(
            !credentials["username"].is_null() && !credentials["password"].is_null(),
            "{credentials}"
        );
    }

    #[test]
    fn purges_are_documented_with_their_body_and_answers() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let path = &doc["paths"]["/v1/orgs/{org}/apps/{app}/purges"]["post"];
        let answers = &path["responses"];
        assert!(
            !answers["200"].is_null() && !answers["202"].is_null(),
            "{answers}"
        );
        let schemas = &doc["components"]["schemas"];
        let request = &schemas["PurgeRequest"];
        for field in ["url", "tag", "all"] {
            assert!(
                !request["properties"][field].is_null(),
                "{field}: {request}"
            );
        }
        assert_eq!(request["additionalProperties"], false);
        let purge = &schemas["Purge"]["properties"];
        for field in ["sequence", "target"] {
            assert!(!purge[field].is_null(), "{field}: {purge}");
        }
        assert!(!schemas["PurgeAccepted"]["properties"]["domains"].is_null());
        let edges = &schemas["EdgeAcks"]["properties"];
        assert!(!edges["connected"].is_null() && !edges["applied"].is_null());
    }
}
