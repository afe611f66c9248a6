//! The README's configuration reference against the configuration structs: every key the code
//! accepts is documented, and every documented key is accepted.
//!
//! The accepted keys come from the code itself, never from a list kept here:
//! - [`KeyProbe`] is a serde `Deserializer` that hands each type's own `Deserialize` impl nothing
//!   but placeholders and records what it is asked for: the field names of every
//!   `deserialize_struct` (renamed as serde renames them), the variants of every `deserialize_enum`,
//!   following `Option`s, newtypes and list elements into nested structs. The roots are the
//!   plugin's [`RawConf`], the objects its untyped keys hold ([`HostShim`] under `hostShim`,
//!   [`iotlan_ipam::PoolConfig`] under `ipam`), and the kubernetes store's
//!   [`iotlan_ipam::store::kubernetes::StoreKey`] under `ipam.store`, whose variants are its keys;
//! - [`iotlan_ipam::StoreConfig`] keeps the keys of other store kinds (`#[serde(flatten)]`), so
//!   serde reads it as a map and names no fields: its own keys are the ones its `Serialize`
//!   derive writes (the same `rename_all`), each checked to be read as its own field, by ADD's
//!   parse and by DEL's lenient one, not kept as another kind's key.
//!
//! The README's side: the tables under `## Configuration reference`. A `###` heading starts an
//! object: its first code span names it (`ipam`, `ipam.store`), none is the top level. A row's
//! first cell is a key of that object, dotted for a nested one (`runtimeConfig.ips`). A nested key
//! is documented by a row of its own or, for the objects a row shows as JSON, by being named in
//! its parent's row (`"timeoutMs"` or `` `timeoutMs` ``). The values of an enumerated key (such as
//! `driver`) must each appear in its row as a code span.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::de::value::{Error as DeError, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::{forward_to_deserialize_any, Deserialize};

use super::{HostShim, RawConf};

/// What [`KeyProbe`] found: every key path, and the variants of each enumerated value.
#[derive(Default)]
struct Shape {
    keys: BTreeSet<String>,
    enums: BTreeMap<String, Vec<&'static str>>,
}

/// A placeholder deserializer at `path` that records the struct fields and enum variants asked for.
struct KeyProbe<'a> {
    path: String,
    shape: &'a RefCell<Shape>,
}

impl<'a> KeyProbe<'a> {
    fn at(&self, path: String) -> KeyProbe<'a> {
        KeyProbe {
            path,
            shape: self.shape,
        }
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// What `T`'s `Deserialize` asks for when deserialized at `path`.
fn probe<'de, T: Deserialize<'de>>(path: &str, shape: &RefCell<Shape>) {
    let probe = KeyProbe {
        path: path.to_string(),
        shape,
    };
    if let Err(e) = T::deserialize(probe) {
        panic!(
            "{}: the key probe cannot walk it ({e}): teach KeyProbe the placeholder it needs",
            std::any::type_name::<T>()
        );
    }
}

impl<'de> de::Deserializer<'de> for KeyProbe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_bool(false)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(0)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i64(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i64(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str("")
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let element = self.at(format!("{}[]", self.path));
        visitor.visit_seq(OneElement(Some(element)))
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // A map's keys are data (reservations' identities, hostShim's node names), not config keys.
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(
            &str,
            &str,
        )>()))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let mut shape = self.shape.borrow_mut();
        for field in fields {
            shape.keys.insert(self.child(field));
        }
        drop(shape);
        visitor.visit_map(Fields {
            probe: self,
            fields,
            next: 0,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.shape
            .borrow_mut()
            .enums
            .insert(self.path.clone(), variants.to_vec());
        visitor.visit_enum(FirstVariant {
            probe: self,
            variants,
        })
    }

    forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any
    }
}

/// A list of one element, probed at `<path>[]`.
struct OneElement<'a>(Option<KeyProbe<'a>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.0.take().map(|p| seed.deserialize(p)).transpose()
    }
}

/// A struct's fields, each given once with a placeholder value probed at its path.
struct Fields<'a> {
    probe: KeyProbe<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        let key: StrDeserializer<'_, DeError> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let field = self.fields[self.next];
        self.next += 1;
        seed.deserialize(self.probe.at(self.probe.child(field)))
    }
}

/// An enum's first variant, its payload (if any) probed at the enum's path.
struct FirstVariant<'a> {
    probe: KeyProbe<'a>,
    variants: &'static [&'static str],
}

impl<'de, 'a> de::EnumAccess<'de> for FirstVariant<'a> {
    type Error = DeError;
    type Variant = KeyProbe<'a>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, KeyProbe<'a>), DeError> {
        let first = self.variants.first().copied().unwrap_or_default();
        let tag: StrDeserializer<'_, DeError> = first.into_deserializer();
        Ok((seed.deserialize(tag)?, self.probe))
    }
}

impl<'de> de::VariantAccess<'de> for KeyProbe<'_> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

/// Every key the code accepts, and the variants of each enumerated one.
fn accepted() -> Shape {
    use iotlan_ipam::store::kubernetes::StoreKey;
    use iotlan_ipam::{PoolConfig, StoreConfig};

    let shape = RefCell::new(Shape::default());
    probe::<RawConf>("", &shape);
    probe::<HostShim>("hostShim", &shape);
    probe::<PoolConfig>("ipam", &shape);
    probe::<StoreKey>("ipam.store", &shape);
    let mut shape = shape.into_inner();
    // The kubernetes kind's keys are the variants of its key enum, not values of `ipam.store`.
    for key in shape.enums.remove("ipam.store").unwrap_or_default() {
        shape.keys.insert(format!("ipam.store.{key}"));
    }
    let written = serde_json::to_value(StoreConfig::default()).unwrap_or_default();
    for key in written.as_object().into_iter().flat_map(|o| o.keys()) {
        let given = serde_json::json!({ key.as_str(): written[key] });
        let parsed: StoreConfig =
            serde_json::from_value(given.clone()).unwrap_or_else(|e| panic!("store.{key}: {e}"));
        assert!(
            !parsed.extra.contains_key(key),
            "store.{key}: written by StoreConfig's Serialize but read as another kind's key"
        );
        assert!(
            !StoreConfig::lenient(&given).extra.contains_key(key),
            "store.{key}: StoreConfig::lenient (DEL) does not read it"
        );
        shape.keys.insert(format!("ipam.store.{key}"));
    }
    shape
}

/// One row of the README's reference: its key path and its whole text.
struct Row {
    path: String,
    text: String,
}

/// The rows of the tables under `## Configuration reference`.
fn documented(readme: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut inside = false;
    let mut object = String::new();
    for line in readme.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            inside = heading.trim() == "Configuration reference";
            object.clear();
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            object = heading.split('`').nth(1).unwrap_or_default().to_string();
            continue;
        }
        let Some(cells) = line.strip_prefix('|') else {
            continue;
        };
        let first = cells.split('|').next().unwrap_or_default().trim();
        let Some(key) = first
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| !k.contains('`'))
        else {
            continue; // the header and the separator
        };
        let path = if object.is_empty() {
            key.to_string()
        } else {
            format!("{object}.{key}")
        };
        rows.push(Row {
            path,
            text: line.to_string(),
        });
    }
    rows
}

/// Whether `path` is a key of the object at `parent` (`parent.key` or, in a list, `parent[].key`),
/// and the key's own name.
fn child_of<'p>(path: &'p str, parent: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(parent)?;
    rest.strip_prefix("[].")
        .or_else(|| rest.strip_prefix('.'))
        .filter(|k| !k.contains('.'))
}

#[test]
fn the_readme_documents_every_key_and_only_keys_the_code_accepts() {
    let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(readme_path).unwrap();
    let rows = documented(&readme);
    assert!(
        rows.len() > 30,
        "no reference tables found in {readme_path}"
    );
    let shape = accepted();
    assert!(shape.keys.contains("conflictCheck.timeoutMs") && shape.keys.contains("ipam.dns"));

    let mut seen = BTreeSet::new();
    let twice: Vec<&str> = rows
        .iter()
        .map(|r| r.path.as_str())
        .filter(|p| !seen.insert(*p))
        .collect();
    assert!(twice.is_empty(), "keys with two rows: {twice:?}");
    let by_path: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| (r.path.as_str(), r.text.as_str()))
        .collect();
    let named_in_parent = |key: &str| {
        shape.keys.iter().any(|parent| {
            child_of(key, parent).is_some_and(|name| {
                by_path.get(parent.as_str()).is_some_and(|row| {
                    row.contains(&format!("\"{name}\"")) || row.contains(&format!("`{name}`"))
                })
            })
        })
    };
    // A key is documented by its own row, by a row of one of its keys, or by its parent's row.
    let undocumented: Vec<&String> = shape
        .keys
        .iter()
        .filter(|key| {
            !by_path.contains_key(key.as_str())
                && !by_path.keys().any(|p| child_of(p, key).is_some())
                && !named_in_parent(key)
        })
        .collect();
    let unknown: Vec<&String> = rows
        .iter()
        .map(|r| &r.path)
        .filter(|p| !shape.keys.contains(*p))
        .collect();
    let mut unlisted_values = Vec::new();
    for (key, values) in &shape.enums {
        let row = by_path.get(key.as_str()).copied().unwrap_or_default();
        for value in values {
            if !row.contains(&format!("`{value}`")) {
                unlisted_values.push(format!("{key}: `{value}`"));
            }
        }
    }
    assert!(
        undocumented.is_empty() && unknown.is_empty() && unlisted_values.is_empty(),
        "README.md's configuration reference and the code disagree:\n\
         accepted but not documented: {undocumented:?}\n\
         documented but not accepted: {unknown:?}\n\
         values of an enumerated key missing from its row: {unlisted_values:?}"
    );
}

#[test]
fn the_key_probe_finds_nested_keys_and_enum_values() {
    let shape = accepted();
    for key in [
        "probe.timeoutMs",
        "announce.intervalMs",
        "ipv6.acceptRA",
        "runtimeConfig.mac",
        "cni.dev/valid-attachments[].containerID",
        "hostShim.addresses",
        "ipam.ipv6.pool",
        "ipam.routes[].gw",
        "ipam.store.stateDir",
        "ipam.store.lockTimeoutMs",
    ] {
        assert!(shape.keys.contains(key), "{key} not found");
    }
    assert!(!shape.keys.contains("ipam.store.extra"));
    assert_eq!(shape.enums["driver"], ["auto", "macvlan", "ipvlan"]);
    // A documented key that no struct has is caught, and so is an undocumented one.
    let rows = documented(
        "## Configuration reference\n### `ipam`\n| key | x |\n|---|---|\n| `subnet` | a |\n| `poool` | b |\n## Next\n| `x` | c |\n",
    );
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["ipam.subnet", "ipam.poool"]);
    assert!(!shape.keys.contains("ipam.poool"));
}
