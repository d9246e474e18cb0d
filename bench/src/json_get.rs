//! `json-get POINTER...`: values out of one JSON document on stdin, for the
//! host-side selftest checks (`vmdedup status --json` and the like), so they
//! need no other language than shell.
//!
//! A pointer is a JSON pointer (RFC 6901: `/vms/0/name`, `~1` for `/`, `~0`
//! for `~`) in which a `*` segment stands for every element of an array or
//! every member of an object, in order: `/vms/*/cut_off`. Every value a
//! pointer reaches is printed on its own line: strings as they are, anything
//! else as compact JSON (`true`, `12`, `{"a":1}`). A pointer that reaches
//! nothing is an error, so a misspelt key fails the check instead of reading
//! as empty.

use std::io::Read;

use anyhow::Context;
use serde_json::Value;

/// Arguments of `json-get`.
#[derive(clap::Args)]
pub struct Args {
    /// JSON pointers, `*` for every element or member (e.g. /vms/*/name).
    #[arg(required = true)]
    pointers: Vec<String>,
}

/// Runs `json-get`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading stdin")?;
    let doc: Value = serde_json::from_str(&input).context("stdin is not one JSON document")?;
    let mut out = String::new();
    for p in &args.pointers {
        for line in get(&doc, p)? {
            out.push_str(&line);
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(())
}

/// The lines `json-get` prints for one pointer.
pub fn get(doc: &Value, pointer: &str) -> anyhow::Result<Vec<String>> {
    let rest = match pointer {
        "" => None,
        p => Some(
            p.strip_prefix('/')
                .with_context(|| format!("{p}: a pointer starts with '/'"))?,
        ),
    };
    let segments: Vec<String> = rest
        .map(|r| {
            r.split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    walk(doc, &segments, &mut found);
    if found.is_empty() {
        anyhow::bail!("{pointer}: no such value");
    }
    Ok(found
        .into_iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect())
}

fn walk<'a>(v: &'a Value, segments: &[String], found: &mut Vec<&'a Value>) {
    let Some((first, rest)) = segments.split_first() else {
        found.push(v);
        return;
    };
    match v {
        Value::Array(items) if first == "*" => {
            for item in items {
                walk(item, rest, found);
            }
        }
        Value::Object(members) if first == "*" => {
            for member in members.values() {
                walk(member, rest, found);
            }
        }
        Value::Array(items) => {
            if let Some(item) = first.parse::<usize>().ok().and_then(|i| items.get(i)) {
                walk(item, rest, found);
            }
        }
        Value::Object(members) => {
            if let Some(member) = members.get(first.as_str()) {
                walk(member, rest, found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(
            r#"{"frames_used": 7, "vms": [
                {"name": "vm1", "cut_off": false, "misses": {"bad_path": 3}},
                {"name": "vm2", "cut_off": true, "misses": {"bad_path": 0}}
            ], "a/b": {"~x": "s"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn plain_pointers() {
        let d = doc();
        assert_eq!(get(&d, "/frames_used").unwrap(), ["7"]);
        assert_eq!(get(&d, "/vms/1/name").unwrap(), ["vm2"]);
        assert_eq!(get(&d, "/vms/0/misses").unwrap(), [r#"{"bad_path":3}"#]);
        assert_eq!(get(&d, "/a~1b/~0x").unwrap(), ["s"]);
    }

    #[test]
    fn star_reaches_every_element_in_order() {
        let d = doc();
        assert_eq!(get(&d, "/vms/*/name").unwrap(), ["vm1", "vm2"]);
        assert_eq!(get(&d, "/vms/*/cut_off").unwrap(), ["false", "true"]);
        assert_eq!(get(&d, "/vms/*/misses/*").unwrap(), ["3", "0"]);
    }

    #[test]
    fn nothing_reached_is_an_error() {
        let d = doc();
        assert!(get(&d, "/frames_usd").is_err());
        assert!(get(&d, "/vms/2/name").is_err());
        assert!(get(&d, "/vms/x").is_err());
        assert!(get(&d, "/frames_used/0").is_err());
        assert!(get(&d, "frames_used").is_err());
    }
}
