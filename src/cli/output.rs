//! Output for people and for scripts: plain aligned tables, `key value` blocks, and with
//! `--json` exactly one JSON object on stdout. Nothing here ever sees a plaintext key except
//! [`secret_block`], which create and rotate call once.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};
use crate::store::{KeyRecord, KeyStatus};

/// Prints `value` as one JSON document on stdout.
pub fn json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(Error::internal)?;
    println!("{text}");
    Ok(())
}

/// Renders rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders `name value` pairs with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

/// A unix time as RFC 3339 UTC, `-` when absent.
pub fn time(t: Option<i64>) -> String {
    t.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

/// A list joined by `sep`, or `empty` when there is nothing.
pub fn list<S: std::borrow::Borrow<str>>(items: &[S], sep: &str, empty: &str) -> String {
    if items.is_empty() {
        empty.into()
    } else {
        items.join(sep)
    }
}

/// The status a person wants to see: `expired` for an active key past its expiry.
pub fn key_status(r: &KeyRecord, now: i64) -> &'static str {
    match r.status {
        KeyStatus::Active if !r.usable_at(now) => "expired",
        s => s.as_str(),
    }
}

/// Every field of a key worth showing, for `keys show` and the confirmations.
pub fn key_fields(r: &KeyRecord, now: i64) -> String {
    let limited = match &r.limited_scopes {
        Some(s) => list(s, " ", "(none)"),
        None => "(default: the read: scopes)".into(),
    };
    let mut pairs = vec![
        ("key_id", r.key_id.to_string()),
        ("name", r.name.clone()),
        (
            "description",
            r.description.clone().unwrap_or_else(|| "-".into()),
        ),
        ("env", r.env.as_str().into()),
        ("status", key_status(r, now).into()),
        ("scopes", r.scopes.join(" ")),
        ("limited_scopes", limited),
        ("rate_limit", format!("{}/min", r.rate_limit_per_minute)),
        (
            "allowed_ips",
            list(
                &r.allowed_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                ", ",
                "any",
            ),
        ),
        ("allowed_origins", list(&r.allowed_origins, ", ", "any")),
        ("max_devices", r.max_devices.to_string()),
        ("trust_on_enroll", r.trust_on_enroll.to_string()),
        ("attestation", r.attestation.as_str().into()),
        ("created_at", time(Some(r.created_at))),
        (
            "expires_at",
            r.expires_at
                .map_or_else(|| "never".into(), |t| time(Some(t))),
        ),
        ("last_used_at", time(r.last_used_at)),
    ];
    if let Some(reason) = &r.status_reason {
        pairs.push(("status_reason", reason.clone()));
    }
    if r.status_changed_at.is_some() {
        pairs.push(("status_changed_at", time(r.status_changed_at)));
    }
    if let Some(from) = &r.rotated_from {
        pairs.push(("rotated_from", from.to_string()));
    }
    if let Some(to) = &r.rotated_to {
        pairs.push(("rotated_to", to.to_string()));
    }
    fields(&pairs)
}

/// The plaintext, set apart so it is easy to copy, with the warning that it is shown once.
pub fn secret_block(plaintext: &str) -> String {
    format!(
        "\n    {plaintext}\n\nThis is the only time the key is shown: store it in a secret manager now.\n\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["a".into(), "x".into()],
                vec!["long-id".into(), "y".into()],
            ],
        );
        assert_eq!(t, "ID       NAME\na        x\nlong-id  y\n");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(time(None), "-");
    }
}
