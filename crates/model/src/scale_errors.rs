//! Test support shared by the `scale` tests (autoscaling and sleep): the validation errors of a
//! definition with a given `scale` and `overrides`.

use crate::{parse_definition_json, validate_definition};

/// The errors of a definition with `scale` and `overrides` (JSON), as `field: message`.
pub(crate) fn scale_errors(scale: &str, overrides: &str) -> Vec<String> {
    let json = format!(
        r#"{{"org":"acme","app":"shop","name":"web","regions":["fra","iad"],
        "runtime":{{"process":{{"command":"x"}}}},"scale":{scale},"overrides":{overrides}}}"#
    );
    let definition = parse_definition_json(json.as_bytes()).unwrap();
    match validate_definition(&definition, &|_| true) {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .errors
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect(),
    }
}
