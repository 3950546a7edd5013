//! Settings as they may be shown or logged: passwords in URLs and
//! secret-named values replaced.

use super::Settings;

/// What stands in for a password or a secret wherever settings are shown.
pub const REDACTED: &str = "***";

/// `text` with the password of every URL in it (`scheme://user:password@host`,
/// or a `password=` query parameter) replaced by [`REDACTED`]; the rest kept.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                let userinfo = &authority[..user_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_parameters(&out)
}

/// `password=…` (and other secret-named parameters) in a query string.
fn redact_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let found = ["password=", "passwd=", "secret=", "token="]
            .iter()
            .filter_map(|key| lower.find(key).map(|at| (at, key.len())))
            .min();
        let Some((at, len)) = found else { break };
        out.push_str(&rest[..at + len]);
        let tail = &rest[at + len..];
        let end = tail
            .find(|c: char| matches!(c, '&' | '#' | '"' | '\'' | ';') || c.is_whitespace())
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(REDACTED);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Is a setting of this name a secret as a whole (not a URL with one in it)?
fn secret_named(name: &str) -> bool {
    [
        "secret",
        "password",
        "passwd",
        "token",
        "private_key",
        "api_key",
    ]
    .iter()
    .any(|word| name.contains(word))
}

fn redact_value(name: &str, value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => {
            *text = if secret_named(name) && !text.is_empty() {
                REDACTED.to_owned()
            } else {
                redact(text)
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact_value(name, v)),
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                redact_value(&key, v);
            }
        }
        _ => {}
    }
}

impl Settings {
    /// The settings as they may be shown or logged: every URL's password and
    /// every secret-named value replaced by [`REDACTED`].
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        redact_value("", &mut value);
        value
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Settings {}", self.redacted())
    }
}
