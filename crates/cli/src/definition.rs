//! Reading a service definition file (YAML, or JSON, which is YAML) into the JSON the API takes,
//! with the file's own lines in every error: nesting past [`MAX_DEPTH`] is refused before the
//! YAML parser runs (see [`yaml_depth`]), and a value of the wrong type is named with its field path and its line
//! and column in the file (the API would name a position in the JSON made of it). Everything
//! else (unknown fields, names, references) is the API's to judge.

use anyhow::{anyhow, Result};

use crate::yaml_depth;

/// How deep a definition's collections may nest; a definition needs a handful of levels.
pub const MAX_DEPTH: usize = 64;

/// Parses `text`, the definition in `file` (its name in errors), into JSON.
pub fn parse(file: &str, text: &str) -> Result<serde_json::Value> {
    if let Err(at) = yaml_depth::check(text, MAX_DEPTH) {
        return Err(anyhow!(
            "{file}: line {} column {}: collections nest deeper than {MAX_DEPTH} levels, the \
             most a definition may have",
            at.line,
            at.column
        ));
    }
    // The error names the field's path and where it is, e.g. `scale.min: invalid type:
    // string "two", expected u32 at line 5 column 15`.
    serde_yaml_ng::from_str::<meridian_model::Definition>(text)
        .map_err(|e| anyhow!("{file}: {e}"))?;
    serde_yaml_ng::from_str(text).map_err(|e| anyhow!("{file} is neither valid YAML nor JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "org: demo\napp: shop\nname: web\nregions: [fra]\n\
                        runtime: {process: {command: x}}\n";

    #[test]
    fn a_mistyped_value_is_named_with_its_path_and_line_in_the_file() {
        let text = format!("{GOOD}scale:\n  min: two\n");
        let err = parse("web.yaml", &text).unwrap_err().to_string();
        assert!(
            err.starts_with("web.yaml: scale.min: invalid type: string \"two\", expected u32")
                && err.ends_with("at line 7 column 8"),
            "{err}"
        );
        let text =
            format!("{GOOD}ports:\n  - {{name: http, port: 80}}\n  - {{name: x, port: big}}\n");
        let err = parse("web.yaml", &text).unwrap_err().to_string();
        assert!(
            err.contains("ports[1].port: invalid type") && err.ends_with("line 8 column 21"),
            "{err}"
        );
    }

    #[test]
    fn too_deep_is_refused_with_the_limit_and_where() {
        let deep = format!(
            "{GOOD}env: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = parse("deep.yaml", &deep).unwrap_err().to_string();
        assert_eq!(
            err,
            "deep.yaml: line 6 column 69: collections nest deeper than 64 levels, the most a \
             definition may have"
        );
    }

    #[test]
    fn too_deep_in_block_style_is_refused_alike() {
        let deep = format!("{GOOD}env:\n{}x\n", "- ".repeat(100_000));
        let err = parse("deep.yaml", &deep).unwrap_err().to_string();
        assert!(
            err.starts_with("deep.yaml: line 7 column 129: collections nest deeper than 64"),
            "{err}"
        );
    }

    #[test]
    fn the_examples_are_read() {
        for (file, text) in [
            ("hello.yaml", include_str!("../../../examples/hello.yaml")),
            ("api.yaml", include_str!("../../../examples/api.yaml")),
        ] {
            let value = parse(file, text).unwrap();
            assert_eq!(value["app"], "shop", "{file}");
        }
    }

    #[test]
    fn a_good_definition_becomes_json_with_unknown_fields_kept_for_the_api() {
        let value = parse("web.yaml", &format!("{GOOD}colour: blue\n")).unwrap();
        assert_eq!(value["regions"], serde_json::json!(["fra"]));
        assert_eq!(value["colour"], "blue");
    }
}
