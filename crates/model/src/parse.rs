//! Parsing JSON input into typed values, reporting every unknown field and the path of any
//! malformed one.

use serde::de::DeserializeOwned;

use crate::{Definition, ValidationErrors};

/// Parses a service definition from JSON. See [`parse_json`].
pub fn parse_definition_json(bytes: &[u8]) -> Result<Definition, ValidationErrors> {
    parse_json(bytes)
}

/// Parses `bytes` as JSON into `T`.
///
/// Unknown fields are errors, all of them reported with their path (`ports[0].nmae`); a value of
/// the wrong type is reported with its path and serde's reason. Fields of `T` must not use
/// `deny_unknown_fields`: unknown fields are collected here instead, so that all are reported.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let ignored = serde_ignored::Deserializer::new(&mut json, &mut record_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(ignored);
    for field in unknown {
        errors.push(field, "unknown field");
    }
    match parsed {
        Ok(value) => match json.end() {
            Ok(()) => errors.into_result().map(|()| value),
            Err(trailing) => {
                errors.push("body", trailing.to_string());
                Err(errors)
            }
        },
        Err(err) => {
            let field = error_path(err.path());
            let field = if field.is_empty() {
                "body".to_owned()
            } else {
                field
            };
            errors.push(field, err.into_inner().to_string());
            Err(errors)
        }
    }
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => push_key(&mut out, key),
            serde_path_to_error::Segment::Unknown => push_key(&mut out, "?"),
        }
    }
    out
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let mut out = ignored_path(parent);
            push_key(&mut out, key);
            out
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(err: &ValidationErrors) -> Vec<&str> {
        err.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn reports_every_unknown_field_with_its_path() {
        let err = parse_definition_json(
            br#"{"org":"a","app":"b","name":"c","regions":["fra"],"colour":1,
                "runtime":{"process":{"command":"x","cmd":"y"}},
                "ports":[{"name":"http","port":80,"nmae":"z"}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            fields(&err),
            ["colour", "runtime.process.cmd", "ports[0].nmae"]
        );
        assert!(err.errors.iter().all(|e| e.message == "unknown field"));
    }

    #[test]
    fn names_the_path_of_a_mistyped_value() {
        let err = parse_definition_json(
            br#"{"org":"a","app":"b","name":"c","regions":["fra"],
                "runtime":{"process":{"command":"x"}},"scale":{"min":"two"}}"#,
        )
        .unwrap_err();
        assert_eq!(fields(&err), ["scale.min"]);
    }

    #[test]
    fn names_a_missing_field() {
        let err =
            parse_definition_json(br#"{"org":"a","app":"b","name":"c","regions":[]}"#).unwrap_err();
        assert!(err.errors[0].message.contains("runtime"), "{err}");
    }

    #[test]
    fn rejects_trailing_garbage() {
        assert!(parse_json::<serde_json::Value>(b"{} x").is_err());
    }
}
