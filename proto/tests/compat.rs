//! The wire contract's compatibility guard: every field and enum value ever published keeps its
//! number, name and type, and a removed one is `reserved` rather than reused. The published
//! contract is `proto/compat/proxy.v1.lock`, one line per field; new fields must be added to it
//! (run `UPDATE_PROTO_LOCK=1 cargo test -p proto --test compat`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// `message.field` → "number type"; `enum.VALUE` → "number"; `message#reserved` → numbers.
type Contract = BTreeMap<String, String>;

fn lock_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat/proxy.v1.lock")
}

fn current() -> Contract {
    let fds = FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut contract = Contract::new();
    for file in fds.file.iter().filter(|f| f.package() == "proxy.v1") {
        for message in &file.message_type {
            message_entries(&mut contract, "", message);
        }
        for e in &file.enum_type {
            for v in &e.value {
                contract.insert(format!("{}.{}", e.name(), v.name()), v.number().to_string());
            }
        }
    }
    contract
}

fn message_entries(contract: &mut Contract, prefix: &str, message: &DescriptorProto) {
    let name = format!("{prefix}{}", message.name());
    for field in &message.field {
        let kind = match field.type_name() {
            "" => format!("{:?}", field.r#type()),
            type_name => type_name.trim_start_matches(".proxy.v1.").to_owned(),
        };
        let label = if field.label() == prost_types::field_descriptor_proto::Label::Repeated {
            "repeated "
        } else {
            ""
        };
        contract.insert(
            format!("{name}.{}", field.name()),
            format!("{} {label}{kind}", field.number()),
        );
    }
    let reserved: Vec<String> = message
        .reserved_range
        .iter()
        .flat_map(|r| r.start()..r.end())
        .map(|n| n.to_string())
        .collect();
    if !reserved.is_empty() {
        contract.insert(format!("{name}#reserved"), reserved.join(" "));
    }
    for nested in &message.nested_type {
        message_entries(contract, &format!("{name}."), nested);
    }
}

fn parse(text: &str) -> Contract {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once(" = ")
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn render(contract: &Contract) -> String {
    let mut text = String::from(
        "# The published wire contract of proxy.v1: checked by proto/tests/compat.rs.\n\
         # Never change or remove a line; add new fields with UPDATE_PROTO_LOCK=1.\n",
    );
    for (k, v) in contract {
        text.push_str(&format!("{k} = {v}\n"));
    }
    text
}

/// Every way `now` breaks `published`; empty when it is compatible.
fn breaks(published: &Contract, now: &Contract) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, was) in published {
        if key.ends_with("#reserved") {
            continue;
        }
        match now.get(key) {
            Some(is) if is == was => {}
            Some(is) => problems.push(format!("{key} changed from `{was}` to `{is}`")),
            None => {
                // Removing is allowed only when the number is reserved.
                let (message, _) = key.rsplit_once('.').unwrap_or((key, ""));
                let number = was.split(' ').next().unwrap_or("");
                let reserved = now.get(&format!("{message}#reserved"));
                if !reserved.is_some_and(|r| r.split(' ').any(|n| n == number)) {
                    problems.push(format!(
                        "{key} (number {number}) was removed without reserving its number"
                    ));
                }
            }
        }
    }
    // A number published for one field must not come back under another name.
    for (key, is) in now {
        if published.contains_key(key) || key.ends_with("#reserved") {
            continue;
        }
        let (message, _) = key.rsplit_once('.').unwrap_or((key, ""));
        let number = is.split(' ').next().unwrap_or("");
        let reused = published.iter().find(|(k, v)| {
            k.rsplit_once('.').map(|(m, _)| m) == Some(message)
                && v.split(' ').next() == Some(number)
        });
        if let Some((old, _)) = reused {
            problems.push(format!("{key} reuses number {number} of {old}"));
        }
    }
    problems
}

#[test]
fn the_wire_contract_only_grows() {
    let now = current();
    if std::env::var_os("UPDATE_PROTO_LOCK").is_some() {
        let published = std::fs::read_to_string(lock_path())
            .map(|t| parse(&t))
            .unwrap_or_default();
        let problems = breaks(&published, &now);
        assert!(
            problems.is_empty(),
            "refusing to record an incompatible contract:\n{}",
            problems.join("\n")
        );
        std::fs::write(lock_path(), render(&now)).unwrap();
        return;
    }
    let published =
        parse(&std::fs::read_to_string(lock_path()).expect("proto/compat/proxy.v1.lock"));
    let problems = breaks(&published, &now);
    assert!(
        problems.is_empty(),
        "the wire contract broke compatibility:\n{}",
        problems.join("\n")
    );
    let new: Vec<_> = now.keys().filter(|k| !published.contains_key(*k)).collect();
    assert!(
        new.is_empty(),
        "new fields are not in proto/compat/proxy.v1.lock yet (run UPDATE_PROTO_LOCK=1 cargo test -p proto --test compat): {new:?}"
    );
}

#[test]
fn the_guard_catches_a_reused_number_a_changed_type_and_a_silent_removal() {
    let published =
        parse("Hello.node_id = 1 String\nHello.pid = 2 Uint32\nAck.version = 1 Uint64\n");
    let reused = parse(
        "Hello.node_id = 1 String\nHello.pid = 2 Uint32\nAck.serial = 1 Uint64\nAck#reserved = 1\n",
    );
    assert!(
        breaks(&published, &reused)
            .iter()
            .any(|p| p.contains("Ack.serial reuses number 1 of Ack.version")),
        "{:?}",
        breaks(&published, &reused)
    );
    let retyped = parse("Hello.node_id = 1 String\nHello.pid = 2 Uint64\nAck.version = 1 Uint64\n");
    assert_eq!(
        breaks(&published, &retyped),
        ["Hello.pid changed from `2 Uint32` to `2 Uint64`"]
    );
    let removed = parse("Hello.node_id = 1 String\nAck.version = 1 Uint64\n");
    assert_eq!(
        breaks(&published, &removed),
        ["Hello.pid (number 2) was removed without reserving its number"]
    );
    let reserved = parse("Hello.node_id = 1 String\nHello#reserved = 2\nAck.version = 1 Uint64\n");
    assert!(breaks(&published, &reserved).is_empty());
    let grown = parse(
        "Hello.node_id = 1 String\nHello.pid = 2 Uint32\nHello.zone = 3 String\nAck.version = 1 Uint64\n",
    );
    assert!(breaks(&published, &grown).is_empty());
}
