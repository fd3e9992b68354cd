//! Settings read from a file, kept only where they validate.

use crate::Error;
use crate::settings::Settings;

/// `s` with every value that does not validate reported in `warnings` and reset to its
/// default.
pub(super) fn keep_valid(mut s: Settings, warnings: &mut Vec<String>) -> Settings {
    let defaults = Settings::default();
    for _ in crate::settings::FIELDS {
        match s.validate() {
            Err(Error::InvalidSetting {
                field,
                value,
                reason,
            }) => {
                warnings.push(format!("ignored {field} = {value}: {reason}"));
                reset_field(&mut s, &defaults, &field);
            }
            _ => break,
        }
    }
    s
}

/// Sets `key` back to its default (by round-tripping through JSON).
fn reset_field(settings: &mut Settings, defaults: &Settings, key: &str) {
    let (Ok(mut value), Ok(default)) = (
        serde_json::to_value(&*settings),
        serde_json::to_value(defaults),
    ) else {
        return;
    };
    if let (Some(obj), Some(d)) = (value.as_object_mut(), default.get(key)) {
        obj.insert(key.to_string(), d.clone());
    }
    if let Ok(restored) = serde_json::from_value(value) {
        *settings = restored;
    }
}
