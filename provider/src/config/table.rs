//! Work on the TOML table before it becomes a [`super::Config`]: environment overrides set into
//! it, and each leaf checked on its own so that every problem is reported at once.

use std::collections::BTreeSet;

use super::issue::ConfigIssue;

/// Prefix of environment overrides: `SWITCHYARD_DATA_DIR` for a top-level key, `__` between
/// levels below: `SWITCHYARD_DATABASE__URL`.
pub const ENV_PREFIX: &str = "SWITCHYARD_";

pub(super) fn apply_env_overrides(
    table: &mut toml::Table,
    mut vars: Vec<(String, String)>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<(String, String)> {
    vars.sort();
    let mut applied = Vec::new();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|part| part.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            issues.push(ConfigIssue {
                key: name.clone(),
                message: "environment override has an empty key segment".into(),
            });
            continue;
        }
        // A value that parses as TOML (number, boolean, array) is taken as such; anything else is a string.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        match insert_at(table, &path, value) {
            Ok(()) => applied.push((name, path.join("."))),
            Err(part) => issues.push(ConfigIssue {
                key: path.join("."),
                message: format!("{name} overrides a key inside `{part}`, which is not a table"),
            }),
        }
    }
    applied
}

/// Names the variable behind each issue whose key (or a section above it, for an unknown
/// section) an override set: the operator would look for it in the file in vain.
pub(super) fn name_overrides(
    mut issues: Vec<ConfigIssue>,
    overrides: &[(String, String)],
) -> Vec<ConfigIssue> {
    for issue in &mut issues {
        let section = format!("{}.", issue.key);
        if let Some((name, _)) = overrides
            .iter()
            .find(|(_, key)| *key == issue.key || key.starts_with(&section))
        {
            issue.message.push_str(&format!(" (set by {name})"));
        }
    }
    issues
}

/// Sets `path` in `table`, making intermediate tables; Err names a segment that is not a table.
fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (leaf, parents) = path.split_last().expect("non-empty path");
    let mut cursor = table;
    for part in parents {
        let entry = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(part.clone()),
        };
    }
    cursor.insert(leaf.clone(), value);
    Ok(())
}

/// Deserializes each leaf on its own (every field has a default), so that every unknown key and
/// every wrong value is reported, not just the first problem serde meets.
pub(super) fn leaf_issues<T: serde::de::DeserializeOwned>(table: &toml::Table) -> Vec<ConfigIssue> {
    let mut leaves = Vec::new();
    collect_leaves(table, &mut Vec::new(), &mut leaves);
    let mut unknown = BTreeSet::new();
    let mut issues = Vec::new();
    for (path, value) in leaves {
        let mut single = toml::Table::new();
        insert_at(&mut single, &path, value).expect("a fresh table has no conflicting keys");
        let mut ignored = Vec::new();
        let result: Result<T, _> =
            serde_ignored::deserialize(toml::Value::Table(single), |p| ignored.push(p.to_string()));
        if !ignored.is_empty() {
            unknown.extend(ignored);
        } else if let Err(e) = result {
            issues.push(ConfigIssue {
                key: path.join("."),
                message: e.message().trim().to_string(),
            });
        }
    }
    let mut all: Vec<ConfigIssue> = unknown
        .into_iter()
        .map(|key| ConfigIssue {
            key,
            message: "unknown key".into(),
        })
        .collect();
    all.extend(issues);
    all
}

fn collect_leaves(
    table: &toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, toml::Value)>,
) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            toml::Value::Table(inner) if !inner.is_empty() => collect_leaves(inner, prefix, out),
            _ => out.push((prefix.clone(), value.clone())),
        }
        prefix.pop();
    }
}
