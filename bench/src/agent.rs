//! The host agent's counters, through `vmdedup status --json` (the stable
//! document README describes).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `VMDEDUP status --json --control SOCK`; `None` if the agent is not
/// answering (not started yet, or gone).
pub fn status(vmdedup: &Path, control: &Path) -> Option<Value> {
    if !control.exists() {
        return None;
    }
    let out = Command::new(vmdedup)
        .args(["status", "--json", "--control"])
        .arg(control)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `v[key]` as a u64 (0 when absent).
pub fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The per-VM entry named `name` of a status document.
pub fn vm<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status
        .get("vms")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

/// Sum of the miss counters of a status document (or of one VM's entry).
pub fn misses(v: &Value, reason: &str) -> u64 {
    v.get("misses").map(|m| u(m, reason)).unwrap_or(0)
}
