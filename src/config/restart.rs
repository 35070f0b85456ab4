//! The settings a reload cannot apply: every setting of the table not
//! marked reloadable, compared key by key so that a reload names what
//! needs a restart. A new setting is covered as soon as it is in the table.

use std::fmt;

use super::table::SETTINGS;
use super::value::Value;
use super::Settings;

/// The values of the settings only a restart applies. Secrets among them
/// are compared but never shown: `Debug` prints the key names only.
#[derive(Clone, PartialEq, Eq)]
pub struct RestartOnly(Vec<(&'static str, Option<Value>)>);

impl RestartOnly {
    /// Takes the restart-only values of `s`.
    pub fn of(s: &Settings) -> RestartOnly {
        RestartOnly(
            SETTINGS
                .iter()
                .filter(|key| !key.reloadable)
                .filter_map(|key| Some((key.name, (key.get?)(s))))
                .collect(),
        )
    }

    /// The keys whose values differ between `self` and `new`, in table
    /// order.
    pub fn changed(&self, new: &RestartOnly) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&new.0)
            .filter(|(old, new)| old.1 != new.1)
            .map(|(old, _)| old.0)
            .collect()
    }
}

impl fmt::Debug for RestartOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::{Kind, SETTINGS};
    use super::super::tests::serve_settings;
    use super::RestartOnly;

    /// A value of `kind` other than the default of every setting here.
    fn changed_value(kind: Kind) -> Option<&'static str> {
        match kind {
            Kind::Count { .. } => Some("7"),
            Kind::Duration { .. } => Some("9s"),
            Kind::Addr => Some("127.0.0.1:4999"),
            Kind::Text => Some("changed"),
            Kind::Bool => Some("true"),
            Kind::LogLevel => Some("debug"),
            Kind::LogFormat => Some("json"),
            Kind::OnReexport => Some("rebuild"),
            Kind::Source => Some("s3://changed/p/"),
            Kind::Path => Some("/changed.sqlite"),
            _ => None,
        }
    }

    #[test]
    fn every_setting_not_marked_reloadable_is_reported() {
        let before = RestartOnly::of(&serve_settings(|_| {}, &[]));
        let mut checked = 0;
        for key in SETTINGS {
            let (Some(_), Some(value)) = (&key.flag, changed_value(key.kind)) else {
                continue;
            };
            if key.name == "s3.access_key_id" {
                continue; // needs its secret too: below
            }
            let after = RestartOnly::of(&serve_settings(|f| f.set(key.name, value), &[]));
            let changed = before.changed(&after);
            if key.reloadable {
                assert!(
                    changed.is_empty(),
                    "{} is reloadable: {changed:?}",
                    key.name
                );
            } else {
                assert_eq!(changed, vec![key.name], "{} needs a restart", key.name);
            }
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} settings tried");
    }

    #[test]
    fn a_changed_secret_is_named_not_shown() {
        let with_key = |secret: &str| {
            RestartOnly::of(&serve_settings(
                |f| f.set("s3.access_key_id", "AKIAEXAMPLE"),
                &[("KVREPLICA_S3_SECRET_ACCESS_KEY", secret)],
            ))
        };
        let (old, new) = (with_key("first-secret-key"), with_key("second-secret-key"));
        assert_eq!(old.changed(&new), vec!["s3.secret_access_key"]);
        let shown = format!("{old:?}");
        assert!(shown.contains("s3.secret_access_key") && !shown.contains("first-secret-key"));
    }
}
