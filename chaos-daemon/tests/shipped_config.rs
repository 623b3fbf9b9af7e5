//! The configuration file the packages install (deploy/config.toml) cannot rot: as shipped (all
//! commented out) it is the defaults; it shows every setting of `Config`, and nothing else; each
//! value it shows is the default, unless its comment says the default is none; and with every
//! setting uncommented it is still a valid configuration.

use chaos_daemon::config::Config;
use serde::de::{Deserialize as _, Deserializer, Error as _, Visitor, value::Error};

const SHIPPED: &str = include_str!("../../deploy/config.toml");

/// A shown setting: `#key = value` (prose comments have a space after the `#`).
struct Setting {
    key: String,
    line: String,
    /// The comment lines just above it.
    comment: String,
}

fn settings() -> Vec<Setting> {
    let mut found = Vec::new();
    let mut comment = String::new();
    for line in SHIPPED.lines() {
        match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => {
                let key = rest.split('=').next().unwrap().trim().to_owned();
                found.push(Setting { key, line: rest.to_owned(), comment: std::mem::take(&mut comment) });
            }
            Some(prose) => comment += prose,
            None => comment.clear(),
        }
    }
    found
}

/// The names of `Config`'s fields, as its derived `Deserialize` gives them to a deserializer.
fn fields() -> Vec<&'static str> {
    struct Names(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Names {
        type Error = Error;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0 = fields;
            Err(Error::custom("only the field names were asked for"))
        }
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("Config is a struct"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = Config::deserialize(&mut names);
    names.0.to_vec()
}

#[test]
fn as_shipped_it_is_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml");
    assert_eq!(Config::load(&path).unwrap(), Config::default());
}

#[test]
fn it_shows_every_setting_once_and_nothing_else() {
    let fields = fields();
    assert!(fields.contains(&"socket") && fields.len() > 10, "{fields:?}");
    let mut shown: Vec<String> = settings().into_iter().map(|s| s.key).collect();
    shown.sort_unstable();
    let mut expected: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    expected.sort_unstable();
    assert_eq!(shown, expected, "deploy/config.toml must show each setting of Config exactly once");
}

#[test]
fn each_value_shown_is_the_default_or_said_to_be_an_example() {
    for s in settings() {
        let alone: Config = toml::from_str(&s.line).unwrap_or_else(|e| panic!("{}: {e}", s.line));
        if alone != Config::default() {
            assert!(
                s.comment.contains("Default: none"),
                "{}: not the default, and its comment does not say 'Default: none'",
                s.line
            );
        }
    }
    let all: String = settings().iter().map(|s| format!("{}\n", s.line)).collect();
    let config: Config = toml::from_str(&all).unwrap();
    config.check().unwrap();
}
