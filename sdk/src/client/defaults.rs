//! The device attributes a client can find by itself (issue 15 item 15): without them the
//! fingerprint keybound compares is empty, and a copied device key loses nothing by being
//! presented from elsewhere.

use rand::RngCore;
use rand::rngs::OsRng;
use std::collections::BTreeMap;

use crate::jose::b64_encode;

/// Adds `platform` and, where it can be read, `model`, unless the app set them.
pub(super) fn fill_platform_and_model(attributes: &mut BTreeMap<String, String>) {
    attributes
        .entry("platform".into())
        .or_insert_with(|| std::env::consts::OS.to_owned());
    if !attributes.contains_key("model")
        && let Some(model) = model()
    {
        attributes.insert("model".into(), model);
    }
}

/// A new install id: 128 random bits, base64url.
pub(super) fn new_install_id() -> String {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    b64_encode(id)
}

/// The hardware model. On Linux the DMI product name (`/sys/devices/virtual/dmi/id`, readable
/// without privileges); elsewhere the platform's API is outside a portable Rust crate's reach
/// (`UIDevice`/`utsname` on iOS, `Build.MODEL` on Android), so the app passes it.
fn model() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        let name = std::fs::read_to_string("/sys/devices/virtual/dmi/id/product_name").ok()?;
        let name = name.trim();
        (!name.is_empty() && name.chars().count() <= 256).then(|| name.to_owned())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_own_values_win() {
        let mut attributes = BTreeMap::from([
            ("platform".to_owned(), "ios".to_owned()),
            ("model".to_owned(), "iPhone15,2".to_owned()),
        ]);
        fill_platform_and_model(&mut attributes);
        assert_eq!(attributes["platform"], "ios");
        assert_eq!(attributes["model"], "iPhone15,2");
        let mut empty = BTreeMap::new();
        fill_platform_and_model(&mut empty);
        assert_eq!(empty["platform"], std::env::consts::OS);
    }

    #[test]
    fn install_ids_are_random() {
        let (a, b) = (new_install_id(), new_install_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
    }
}
