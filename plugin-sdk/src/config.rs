//! The plugin's configuration as handed to `init`.

use serde_json::Value;

/// The `config` table of a plugin's sidecar file, received as JSON.
#[derive(Debug, Clone, Default)]
pub struct Config(Value);

impl Config {
    /// Parses the JSON the broker passes to `init`; an empty string is an
    /// empty configuration.
    pub fn parse(json: &str) -> Result<Config, String> {
        if json.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_json::from_str(json).map(Config).map_err(|e| format!("config is not JSON: {e}"))
    }

    /// The whole configuration value.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// A string setting, if present.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// A list-of-strings setting; absent means empty, other types are an error.
    pub fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.0.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("`{key}` must list strings")))
                .collect(),
            Some(_) => Err(format!("`{key}` must be a list of strings")),
        }
    }

    /// An integer setting, if present.
    pub fn i64(&self, key: &str) -> Option<i64> {
        self.0.get(key).and_then(Value::as_i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_and_lists() {
        let c = Config::parse(r#"{"prefix":"a/","users":["x","y"]}"#).expect("valid json");
        assert_eq!(c.str("prefix"), Some("a/"));
        assert_eq!(c.strings("users"), Ok(vec!["x".to_owned(), "y".to_owned()]));
        assert_eq!(c.strings("none"), Ok(vec![]));
        assert!(c.strings("prefix").is_err());
        assert!(Config::parse("").is_ok());
        assert!(Config::parse("{").is_err());
    }
}
